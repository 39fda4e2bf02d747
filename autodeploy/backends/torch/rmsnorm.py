"""autodeploy::rmsnorm — RMS normalization over the last dim, with its CPU reference implementation.

    x [..., h], weight [h] -> [..., h] in x's dtype

The statistics are always taken in fp32. The two forms follow transformers' numerics exactly:

- add_unit_offset=False (Llama, Mistral, Qwen, Phi3, DeepSeek, GPT-OSS):
      weight * (x.float() * rsqrt(mean(x.float()^2) + eps)).to(x.dtype)
  GPT-OSS multiplies by the weight before casting back; the result differs from this by at most
  one rounding of the activation dtype, and not at all in fp32.
- add_unit_offset=True (Gemma 1/2/3): the weight stores w - 1 and the product happens in fp32:
      (x.float() * rsqrt(mean(x.float()^2) + eps) * (1 + weight.float())).to(x.dtype)
"""

from __future__ import annotations

import torch
from torch import Tensor


@torch.library.custom_op("autodeploy::rmsnorm", mutates_args=())
def rmsnorm(x: Tensor, weight: Tensor, eps: float, add_unit_offset: bool = False) -> Tensor:
    """x [..., h], weight [h] -> [..., h]."""
    xf = x.float()
    normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    if add_unit_offset:
        return (normed * (1.0 + weight.float())).to(x.dtype)
    return (weight * normed.to(x.dtype)).to(x.dtype)


@rmsnorm.register_fake
def _(x, weight, eps, add_unit_offset=False):
    return torch.empty_like(x, memory_format=torch.contiguous_format)
