"""RMSNorm spellings of transformers -> autodeploy::rmsnorm.

- llama:   weight * (h * rsqrt(mean(h^2) + eps)).to(x.dtype), h = x.float()
           (Llama, Mistral, Qwen2/3, Phi3, Mixtral, DeepSeek-V3, SmolLM2; Qwen3 q/k norms)
- gpt_oss: (weight * h * rsqrt(...)).to(x.dtype): the same graph as llama in fp32
- gemma:   (h * rsqrt(...) * (1 + weight.float())).type_as(x)   (Gemma 1/2/3, Gemma3 q/k norms)
"""

from __future__ import annotations

import torch

import autodeploy.ops  # noqa: F401  (registers torch.ops.autodeploy.*)
from autodeploy.graph import val
from autodeploy.patterns.registry import Match, Pattern

EPS = 0.00123  # sentinel: found nowhere else in the traced patterns


def _normed(h, eps):
    return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)


def rmsnorm_llama_pattern(x, weight, eps):
    h = x.to(torch.float32)
    return weight * _normed(h, eps).to(x.dtype)


def rmsnorm_gpt_oss_pattern(x, weight, eps):
    h = x.to(torch.float32)
    return (weight * _normed(h, eps)).to(x.dtype)


def rmsnorm_gemma_pattern(x, weight, eps):
    out = _normed(x.float(), eps)
    return (out * (1.0 + weight.float())).type_as(x)


def rmsnorm_replacement(x, weight, eps):
    return torch.ops.autodeploy.rmsnorm.default(x, weight, eps, False)


def rmsnorm_unit_offset_replacement(x, weight, eps):
    return torch.ops.autodeploy.rmsnorm.default(x, weight, eps, True)


def _example(sz, dtype):
    return dict(x=torch.randn(sz.b, sz.s, sz.h, dtype=dtype), weight=torch.randn(sz.h, dtype=dtype), eps=EPS)


def rmsnorm_check(m: Match) -> bool:
    """weight [h] over the last dim of a floating x, of x's dtype; eps a plain number."""
    x, w = m.val("x"), val(m.inputs["weight"])
    if not isinstance(x, torch.Tensor) or not isinstance(w, torch.Tensor) or not x.dtype.is_floating_point:
        return False
    return w.dim() == 1 and w.shape[0] == x.shape[-1] and w.dtype == x.dtype and isinstance(m.inputs["eps"], float)


# Gemma first: in fp32 its tail `mul(normed, 1 + w)` would also fit llama's `mul(weight, normed)`.
RMSNORM_PATTERNS = [
    Pattern("rmsnorm_gemma", rmsnorm_gemma_pattern, rmsnorm_unit_offset_replacement, _example, rmsnorm_check),
    Pattern("rmsnorm_llama", rmsnorm_llama_pattern, rmsnorm_replacement, _example, rmsnorm_check),
    Pattern("rmsnorm_gpt_oss", rmsnorm_gpt_oss_pattern, rmsnorm_replacement, _example, rmsnorm_check),
]
