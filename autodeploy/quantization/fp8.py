"""FP8 (e4m3) weights and per-token activations.

    w [N, K] -> weight e4m3 [N, K], weight_scale fp32 [N] (per channel) or [] (per tensor)
    w ≈ weight.float() * weight_scale[:, None]

e4m3 keeps 3 mantissa bits: a rounding error of at most 1/16 of the value, about 31.5 dB SQNR on
any distribution that stays clear of the subnormals (the format is relative, so outliers cost
nothing once the scale maps the largest value to 448). Quantizing the activations too adds a
second, independent error of the same size: about 28.5 dB for the product.

Block-wise scales ([N/bn, K/bk], transformers' "fp8" checkpoints of DeepSeek-V3 style) are read
and dequantized here; the quantizer itself writes per-channel or per-tensor scales.
"""

from __future__ import annotations

import torch
from torch import Tensor

DTYPE = torch.float8_e4m3fn
FP8_MAX = torch.finfo(DTYPE).max  # 448
MIN_SCALE = 1e-12  # an all-zero row or token keeps a finite scale


def quantize(w: Tensor, granularity: str = "per_channel", dim: int = -1) -> dict[str, Tensor]:
    """w [N, K] -> {"weight": e4m3 [N, K], "weight_scale": fp32 [N] or []}.

    Stacks (MoE experts [E, N, K]) reduce over `dim`, the input channels, and keep it: scale [E, N, 1].
    """
    wf = w.float()
    if granularity == "per_channel":
        scale = (wf.abs().amax(dim=dim, keepdim=True) / FP8_MAX).clamp(min=MIN_SCALE)
    else:
        scale = (wf.abs().amax() / FP8_MAX).clamp(min=MIN_SCALE)
    q = (wf / scale).clamp(-FP8_MAX, FP8_MAX).to(DTYPE)
    if granularity == "per_channel" and w.dim() == 2 and dim in (-1, 1):
        scale = scale.squeeze(-1)  # [N]
    return {"weight": q, "weight_scale": scale}


def expand_scale(weight_scale: Tensor, shape: torch.Size) -> Tensor:
    """A weight scale of any supported layout -> broadcastable to the [..., N, K] weight (fp32).

    []: per tensor;  [N]: per channel;  [N, 1]: per channel (fbgemm_fp8);  [N/bn, K/bk]: per block.
    """
    s = weight_scale.float()
    n, k = shape[-2], shape[-1]
    if s.dim() == 0 or s.numel() == 1:
        return s.reshape(())
    if s.dim() == 1 or (s.dim() == 2 and s.shape[-1] == 1 and s.shape[0] == n):
        return s.reshape(n, 1)
    bn, bk = -(-n // s.shape[-2]), -(-k // s.shape[-1])  # ceil: the last block may be partial
    return s.repeat_interleave(bn, dim=-2)[..., :n, :].repeat_interleave(bk, dim=-1)[..., :k]


def dequantize(weight: Tensor, weight_scale: Tensor, dtype=torch.float32) -> Tensor:
    return (weight.float() * expand_scale(weight_scale, weight.shape)).to(dtype)


def quantize_rows(x: Tensor) -> tuple[Tensor, Tensor]:
    """Dynamic per-token scaling: x [M, K] -> (e4m3 [M, K], fp32 scale [M, 1])."""
    xf = x.float()
    scale = (xf.abs().amax(dim=-1, keepdim=True) / FP8_MAX).clamp(min=MIN_SCALE)  # [M, 1]
    return (xf / scale).clamp(-FP8_MAX, FP8_MAX).to(DTYPE), scale
