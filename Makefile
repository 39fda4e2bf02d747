# Every target does its own set-up on a fresh machine: a venv in .venv, torch first (the CPU wheel
# this machine keeps on disk; a bare `torch` would pull a multi-GB CUDA build), then the project.
VENV   ?= .venv
PY     := $(VENV)/bin/python
AD     := $(VENV)/bin/autodeploy
TORCH  ?= torch==2.13.0
PYTEST_ARGS ?= -n 2 --timeout 900

.PHONY: venv test test-fast demo clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev,triton,server]"
	touch $@

test: venv
	$(PY) -m pytest $(PYTEST_ARGS) tests

test-fast: venv
	$(PY) -m pytest $(PYTEST_ARGS) -m "not slow" tests

demo: venv
	$(AD) optimize example:smollm2 --recipe cpu
	$(AD) generate example:smollm2 --recipe cpu --max-tokens 32 --prompt "What is the capital of France?"

clean:
	rm -rf $(VENV) .pytest_cache
