"""Every decode GEMV kernel compiles for sm_90 (no GPU needed): the interpreter tests cannot see
compile-only errors (non-constexpr globals, constexpr branches returning different shapes), which
cost a GPU run to find before this test existed.

In a child process: tests/backends/triton/conftest.py imports the kernels interpreted
(TRITON_INTERPRET=1) for the whole session, and interpreted kernels cannot be compiled.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_kernels_compile_for_sm90():
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.run([sys.executable, "-m", "tests.helpers.triton_aot"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    report = proc.stdout + proc.stderr
    assert proc.returncode == 0, report
    assert report.count("\nok ") >= 22, report  # every case ran
