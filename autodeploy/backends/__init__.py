"""backends: torch/ (the reference ops, CPU and GPU) and triton/ (GPU kernels behind their twins).

`triton_kernel(name)`: a module of backends/triton for code outside the op registry (the runtime's
sampler and decode graph call a kernel directly on CUDA), or None where Triton is missing or broken, so
the caller falls back to torch ops.
"""

from __future__ import annotations

import functools
import importlib
from types import ModuleType
from typing import Optional


@functools.lru_cache(maxsize=None)
def triton_kernel(name: str) -> Optional[ModuleType]:
    """autodeploy.backends.triton.<name>, or None without a usable Triton."""
    try:
        return importlib.import_module(f"autodeploy.backends.triton.{name}")
    except Exception:  # noqa: BLE001  (triton missing or broken: the caller's torch path)
        return None
