"""RMSNorm modules written the way HF models write them, for graph-level transform tests.

transformers' own classes are not imported: their modeling modules import triton, which
tests/backends/triton/conftest.py must import first (interpreted) when both directories run in one
process.
"""

from __future__ import annotations

import torch
from torch import nn


class LlamaNorm(nn.Module):
    """weight * normed(x) in x's dtype; weight random (match tests) or ones (numerics tests)."""

    def __init__(self, h, eps=1e-6, random_weight=True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(h) if random_weight else torch.ones(h))
        self.eps = eps

    def forward(self, x):
        dtype = x.dtype
        x = x.to(torch.float32)
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class GemmaNorm(LlamaNorm):
    """Gemma stores w - 1: (1 + w) * normed(x), all in fp32."""

    def forward(self, x):
        out = x.float()
        out = out * torch.rsqrt(out.pow(2).mean(-1, keepdim=True) + self.eps)
        return (out * (1.0 + self.weight.float())).type_as(x)
