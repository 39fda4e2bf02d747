"""autodeploy::rope reference vs HF's spellings: rotate_half, partial rotary, interleaved (DeepSeek)."""

from __future__ import annotations

import pytest
import torch

import autodeploy.ops  # noqa: F401
from tests.helpers.tolerances import assert_close

rope = torch.ops.autodeploy.rope


def tables(b, s, d_rot, theta=10000.0, dtype=torch.float32):
    inv_freq = 1.0 / theta ** (torch.arange(0, d_rot, 2).float() / d_rot)
    pos = torch.arange(s).float().unsqueeze(0).expand(b, s) + torch.arange(b).unsqueeze(1) * 3  # distinct per row
    freqs = pos.unsqueeze(-1) * inv_freq  # [b, s, d_rot / 2]
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x):
    return torch.cat([-x[..., x.shape[-1] // 2:], x[..., : x.shape[-1] // 2]], dim=-1)


def hf_rope(x, cos, sin):
    """HF Llama: x [b, n, s, d] (bnsd), cos [b, s, d] unsqueezed at dim 1; partial rotary like Phi3."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    d_rot = cos.shape[-1]
    x_rot, x_pass = x[..., :d_rot], x[..., d_rot:]
    return torch.cat([x_rot * cos + rotate_half(x_rot) * sin, x_pass], dim=-1)


def complex_rope(x, cos, sin):
    """Meta's complex form on adjacent pairs: x [b, s, n, d], output interleaved."""
    half = cos.shape[-1] // 2
    xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    freqs = torch.complex(cos[..., :half], sin[..., :half]).unsqueeze(2)  # [b, s, 1, d/2]
    return torch.view_as_real(xc * freqs).flatten(-2)


@pytest.mark.parametrize("d_rot", [16, 8], ids=["full", "partial"])
def test_rotate_half(d_rot):
    q, k = torch.randn(2, 5, 4, 16), torch.randn(2, 5, 2, 16)
    cos, sin = tables(2, 5, d_rot)
    q_out, k_out = rope(q, k, cos, sin, False)
    assert_close(q_out, hf_rope(q.transpose(1, 2), cos, sin).transpose(1, 2))
    assert_close(k_out, hf_rope(k.transpose(1, 2), cos, sin).transpose(1, 2))
    if d_rot < 16:
        assert torch.equal(q_out[..., d_rot:], q[..., d_rot:])


def test_interleaved_is_deinterleaved_complex_form():
    q, k = torch.randn(2, 5, 4, 8), torch.randn(2, 5, 1, 8)
    cos, sin = tables(2, 5, 8)
    q_out, k_out = rope(q, k, cos, sin, True)
    for out, x in ((q_out, q), (k_out, k)):
        ref = complex_rope(x, cos, sin)
        assert_close(out, torch.cat([ref[..., 0::2], ref[..., 1::2]], dim=-1))


def test_interleaved_matches_hf_deepseek_view_transpose_spelling():
    q, k = torch.randn(2, 5, 4, 8), torch.randn(2, 5, 1, 8)
    cos, sin = tables(2, 5, 8)

    def deepseek(x):  # transformers' DeepSeek-V3 (bnsd): de-interleave, then rotate_half
        b, h, s, d = x.shape
        x = x.view(b, h, s, d // 2, 2).transpose(4, 3).reshape(b, h, s, d)
        return x * cos.unsqueeze(1) + rotate_half(x) * sin.unsqueeze(1)

    q_out, k_out = rope(q, k, cos, sin, True)
    assert_close(q_out, deepseek(q.transpose(1, 2)).transpose(1, 2))
    assert_close(k_out, deepseek(k.transpose(1, 2)).transpose(1, 2))


def test_position_zero_is_identity_and_norm_is_kept():
    q, k = torch.randn(1, 6, 2, 16), torch.randn(1, 6, 2, 16)
    cos, sin = tables(1, 6, 16)
    q_out, _ = rope(q, k, cos, sin, False)
    assert_close(q_out[:, 0], q[:, 0])
    assert_close(q_out.norm(dim=-1), q.norm(dim=-1))


def test_bf16_like_hf():
    q, k = torch.randn(2, 5, 4, 16, dtype=torch.bfloat16), torch.randn(2, 5, 2, 16, dtype=torch.bfloat16)
    cos, sin = tables(2, 5, 16, dtype=torch.bfloat16)
    q_out, k_out = rope(q, k, cos, sin, False)
    assert q_out.dtype == k_out.dtype == torch.bfloat16
    assert torch.equal(q_out, hf_rope(q.transpose(1, 2), cos, sin).transpose(1, 2))
