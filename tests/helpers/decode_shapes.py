"""Llama-3.1-8B decode GEMM shapes and activations with an outlier channel, shared by the GPU kernel tests."""

from __future__ import annotations

import torch

# (N, K) of each weight GEMM of an 8B decode step (qkv and gate_up fused), and an unfused k / v
SHAPES_8B = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336),
             "lm_head": (128256, 4096), "k": (1024, 4096)}


def activations(m: int, k: int, dtype: torch.dtype = torch.bfloat16, device: str = "cuda") -> torch.Tensor:
    """x [m, k] ~ N(0, 1) with channel 7 scaled 25x: an outlier channel, as real activations have."""
    x = torch.randn(m, k, device=device)
    x[:, 7] *= 25.0
    return x.to(dtype)
