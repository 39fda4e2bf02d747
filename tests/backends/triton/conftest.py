"""Run the Triton kernels on CPU through the interpreter when there is no GPU.

Triton decides at decoration time (`@triton.jit`) whether a kernel is interpreted, and lazily imports
a few modules that check the flag again at the first launch. So TRITON_INTERPRET=1 is set while
autodeploy.backends.triton is imported here, and again around each test of this directory, then
restored: other tests in the same process never see the variable.
"""

from __future__ import annotations

import os

import pytest
import torch

INTERPRET = not torch.cuda.is_available()

if INTERPRET:
    _saved = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        import autodeploy.backends.triton as _triton_backends
    finally:
        if _saved is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = _saved
    if not _triton_backends.interpreted():
        raise RuntimeError(
            "autodeploy.backends.triton was imported before tests/backends/triton/conftest.py could set "
            "TRITON_INTERPRET=1: run tests/backends/triton in its own pytest process"
        )


@pytest.fixture(autouse=True)
def _interpret(monkeypatch):
    if INTERPRET:
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    yield
