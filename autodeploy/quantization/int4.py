"""Group-wise asymmetric int4: quantize, pack two per byte, unpack, dequantize.

    w [N, K]  ->  q [N, K] in 0..15,  scales [N, K/g],  zeros [N, K/g]      w ≈ (q - zero) * scale

Packing ("half-split"): byte j of a row holds column j in its low nibble and column j + K/2 in its
high nibble, so qweight is [N, K/2] uint8. A kernel then reads one contiguous run of bytes per row
and gets two contiguous runs of columns (the first and second half of K) without interleaving
nibbles: two dot products per tile instead of a shuffle. Scales and zeros share the weight's dtype
(zeros are whole numbers 0..15, exact in bf16).
"""

from __future__ import annotations

import torch
from torch import Tensor

QMAX = 15


def check_shape(n: int, k: int, group_size: int) -> str | None:
    """None when a [n, k] weight can be quantized with `group_size`, else why not."""
    if k % group_size:
        return f"input size {k} is not a multiple of the group size {group_size}"
    if k % 2:
        return f"input size {k} is odd (two int4 values share a byte)"
    return None


def pack(q: Tensor) -> Tensor:
    """q [N, K] integers 0..15 -> [N, K/2] uint8 (low nibble: column j, high nibble: column j + K/2)."""
    half = q.shape[-1] // 2
    q = q.to(torch.uint8)
    return q[..., :half] | (q[..., half:] << 4)


def unpack(packed: Tensor) -> Tensor:
    """[N, K/2] uint8 -> q [N, K] uint8 in 0..15."""
    return torch.cat([packed & 0xF, packed >> 4], dim=-1)


def group_params(w: Tensor, group_size: int, clip: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Per-group scale and zero point from the group's min and max (shrunk by `clip` [N, K/g] in (0, 1]).

    Returns scales, zeros [N, K/g] in fp32; zero is a whole number in 0..15 so that 0.0 is exact.
    """
    n, k = w.shape
    g = w.float().reshape(n, k // group_size, group_size)
    lo = g.amin(-1).clamp(max=0.0)  # the range always holds 0: padding and exact zeros stay exact
    hi = g.amax(-1).clamp(min=0.0)
    if clip is not None:
        lo, hi = lo * clip, hi * clip
    scales = ((hi - lo) / QMAX).clamp(min=1e-8)
    zeros = torch.round(-lo / scales).clamp(0, QMAX)
    return scales, zeros


def quantize_with(w: Tensor, scales: Tensor, zeros: Tensor, group_size: int) -> Tensor:
    """Round w [N, K] onto the given grid -> q [N, K] uint8 in 0..15."""
    n, k = w.shape
    g = w.float().reshape(n, k // group_size, group_size)
    q = torch.round(g / scales.float().unsqueeze(-1)) + zeros.float().unsqueeze(-1)
    return q.clamp(0, QMAX).reshape(n, k).to(torch.uint8)


def dequantize_q(q: Tensor, scales: Tensor, zeros: Tensor, group_size: int, dtype=torch.float32) -> Tensor:
    """q [N, K] (unpacked) -> w [N, K] in `dtype` (math in fp32)."""
    n, k = q.shape
    g = q.float().reshape(n, k // group_size, group_size)
    w = (g - zeros.float().unsqueeze(-1)) * scales.float().unsqueeze(-1)
    return w.reshape(n, k).to(dtype)


def dequantize(qweight: Tensor, scales: Tensor, zeros: Tensor, group_size: int, dtype=torch.float32) -> Tensor:
    """Packed qweight [N, K/2] -> w [N, K]."""
    return dequantize_q(unpack(qweight), scales, zeros, group_size, dtype)


def quantize(w: Tensor, group_size: int, clip: Tensor | None = None) -> dict[str, Tensor]:
    """Round-to-nearest: w [N, K] -> {"qweight" [N, K/2] uint8, "scales", "zeros" [N, K/g] in w's dtype}."""
    scales, zeros = group_params(w, group_size, clip)
    scales = scales.to(w.dtype).float()  # round on the grid the stored scales describe
    q = quantize_with(w, scales, zeros, group_size)
    return {"qweight": pack(q), "scales": scales.to(w.dtype), "zeros": zeros.to(w.dtype)}
