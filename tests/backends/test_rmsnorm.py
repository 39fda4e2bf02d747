"""autodeploy::rmsnorm reference vs HF's Llama and Gemma spellings (bit-exact, fp32 and bf16)."""

from __future__ import annotations

import pytest
import torch

import autodeploy.ops  # noqa: F401

rmsnorm = torch.ops.autodeploy.rmsnorm


def llama_rmsnorm(x, w, eps):
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return w * h.to(x.dtype)


def gemma_rmsnorm(x, w, eps):
    h = x.float()
    out = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return (out * (1.0 + w.float())).type_as(x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_llama_form_bit_exact(dtype):
    x, w = torch.randn(3, 5, 64, dtype=dtype), torch.randn(64, dtype=dtype)
    out = rmsnorm(x, w, 1e-6)
    assert out.dtype == dtype
    assert torch.equal(out, llama_rmsnorm(x, w, 1e-6))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gemma_unit_offset_bit_exact(dtype):
    x, w = torch.randn(2, 7, 64, dtype=dtype), torch.randn(64, dtype=dtype) * 0.1
    out = rmsnorm(x, w, 1e-6, True)
    assert out.dtype == dtype
    assert torch.equal(out, gemma_rmsnorm(x, w, 1e-6))


def test_eps_matters_for_tiny_inputs():
    x, w = torch.full((1, 8), 1e-4), torch.ones(8)
    assert (rmsnorm(x, w, 1e-2) - rmsnorm(x, w, 1e-12)).abs().max() > 1e-2


def test_head_norm_shape():
    # Qwen3 / Gemma3 q-k norm: over head_dim of [b, s, n, d]
    x, w = torch.randn(2, 3, 4, 16), torch.randn(16)
    assert torch.equal(rmsnorm(x, w, 1e-6), llama_rmsnorm(x, w, 1e-6))
