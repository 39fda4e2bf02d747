"""Symmetric int8 weights with one fp32 scale per output channel.

    w [N, K] -> weight int8 [N, K] in -127..127, weight_scale fp32 [N]      w ≈ weight * scale[:, None]

The same layout quantizes MoE expert stacks [E, N, K] (a scale per expert and output channel), where
the weight is dequantized in the graph before the expert op.
"""

from __future__ import annotations

import torch
from torch import Tensor

QMAX = 127


def quantize(w: Tensor, dim: int = -1) -> dict[str, Tensor]:
    """Reduce over `dim` (the input channels): w -> {"weight": int8, "weight_scale": fp32, keepdim at `dim`
    for stacks, [N] for a plain [N, K] weight}."""
    wf = w.float()
    scale = (wf.abs().amax(dim=dim, keepdim=True) / QMAX).clamp(min=1e-12)
    q = torch.round(wf / scale).clamp(-QMAX, QMAX).to(torch.int8)
    if w.dim() == 2 and dim in (-1, 1):
        scale = scale.squeeze(-1)
    return {"weight": q, "weight_scale": scale}


def dequantize(weight: Tensor, weight_scale: Tensor, dtype=torch.float32) -> Tensor:
    s = weight_scale.float()
    if weight.dim() == 2 and s.dim() == 1:
        s = s.unsqueeze(-1)
    return (weight.float() * s).to(dtype)
