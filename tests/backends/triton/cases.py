"""Devices and dtypes the kernel tests run on: interpreted fp32 on CPU; fp32, bf16 and fp16 on CUDA."""

from __future__ import annotations

import pytest
import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32] if DEVICE == "cpu" else [torch.float32, torch.bfloat16, torch.float16]

dtypes = pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))


def randn(*shape, dtype=torch.float32, scale=1.0):
    """Random values drawn in fp32 on the CPU (same numbers on every device), then moved."""
    return (torch.randn(*shape) * scale).to(device=DEVICE, dtype=dtype)
