"""autodeploy::attention reference vs plain PyTorch: GQA, MQA, window, softcap, sinks, d_v != d."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import autodeploy.ops  # noqa: F401
from tests.helpers.tolerances import assert_close

attention = torch.ops.autodeploy.attention


def reference(q, k, v, scale, *, causal=True, window=None, softcap=None, sinks=None):
    """HF eager spelling: repeat_kv, matmul, softcap, additive mask, [sinks], softmax, matmul (bnsd)."""
    n, n_kv = q.shape[2], k.shape[2]
    qt = q.transpose(1, 2)
    kt = k.transpose(1, 2).repeat_interleave(n // n_kv, dim=1)
    vt = v.transpose(1, 2).repeat_interleave(n // n_kv, dim=1)
    logits = qt @ kt.transpose(2, 3) * scale  # [b, n, s, s]
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    s = q.shape[1]
    i = torch.arange(s).unsqueeze(1)
    j = torch.arange(s).unsqueeze(0)
    keep = torch.ones(s, s, dtype=torch.bool)
    if causal:
        keep &= j <= i
    if window is not None:
        keep &= j > i - window
    logits = logits + torch.zeros(s, s).masked_fill(~keep, torch.finfo(torch.float32).min)
    if sinks is not None:
        sink = sinks.reshape(1, -1, 1, 1).expand(q.shape[0], -1, s, 1)
        probs = torch.softmax(torch.cat([logits, sink], dim=-1), dim=-1)[..., :-1]
    else:
        probs = torch.softmax(logits, dim=-1)
    return (probs @ vt).transpose(1, 2)


def qkv(b=2, s=7, n=4, n_kv=2, d=16, d_v=None, dtype=torch.float32):
    d_v = d if d_v is None else d_v
    return (torch.randn(b, s, n, d, dtype=dtype), torch.randn(b, s, n_kv, d, dtype=dtype),
            torch.randn(b, s, n_kv, d_v, dtype=dtype))


@pytest.mark.parametrize("n_kv", [4, 2, 1], ids=["mha", "gqa", "mqa"])
def test_causal_heads(n_kv):
    q, k, v = qkv(n_kv=n_kv)
    out = attention(q, k, v, None, 0.25, True, None, None)
    assert_close(out, reference(q, k, v, 0.25))


def test_matches_sdpa_with_explicit_causal_mask():
    q, k, v = qkv(n_kv=4)
    mask = torch.ones(7, 7, dtype=torch.bool).tril()
    expected = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                              attn_mask=mask, scale=0.3).transpose(1, 2)
    assert_close(attention(q, k, v, None, 0.3), expected)


def test_not_causal():
    q, k, v = qkv()
    assert_close(attention(q, k, v, None, 0.25, False), reference(q, k, v, 0.25, causal=False))


@pytest.mark.parametrize("window", [1, 3, 7, 20])
def test_sliding_window(window):
    q, k, v = qkv(s=9)
    out = attention(q, k, v, None, 0.25, True, window, None)
    assert_close(out, reference(q, k, v, 0.25, window=window))


def test_window_of_one_sees_only_itself():
    q, k, v = qkv(n_kv=4)
    out = attention(q, k, v, None, 0.25, True, 1, None)
    assert_close(out, v)


def test_softcap_with_window():
    q, k, v = qkv()
    q = q * 4  # large logits so the cap matters
    out = attention(q, k, v, None, 0.25, True, 3, 5.0)
    assert_close(out, reference(q, k, v, 0.25, window=3, softcap=5.0))
    assert (out - reference(q, k, v, 0.25, window=3)).abs().max() > 1e-2


def test_sinks():
    q, k, v = qkv()
    sinks = torch.randn(4)
    out = attention(q, k, v, sinks, 0.25, True, 4, None)
    assert_close(out, reference(q, k, v, 0.25, window=4, sinks=sinks))
    # a sink only shrinks the weights: rows no longer sum to one, so the output differs from no sinks
    assert (out - reference(q, k, v, 0.25, window=4)).abs().max() > 1e-3


def test_value_dim_differs():
    q, k, v = qkv(n_kv=4, d=24, d_v=16)
    scale = 1 / math.sqrt(24)
    out = attention(q, k, v, None, scale)
    assert out.shape == (2, 7, 4, 16)
    assert_close(out, reference(q, k, v, scale))
    assert_close(attention(q, k, v, None, scale, True, None, 30.0), reference(q, k, v, scale, softcap=30.0))


def test_default_scale_is_inverse_sqrt_head_dim():
    q, k, v = qkv()
    assert_close(attention(q, k, v), reference(q, k, v, 0.25))


def test_bf16_keeps_dtype():
    q, k, v = qkv(dtype=torch.bfloat16)
    out = attention(q, k, v, torch.zeros(4, dtype=torch.bfloat16), 0.25, True, None, None)
    assert out.dtype == torch.bfloat16
    expected = reference(q.float(), k.float(), v.float(), 0.25, sinks=torch.zeros(4))
    assert_close(out, expected.to(torch.bfloat16))


def test_fake_shape_and_export():
    class M(torch.nn.Module):
        def forward(self, q, k, v):
            return attention(q, k, v, None, 0.25, True, 2, None)

    q, k, v = qkv(n_kv=1, d=16, d_v=8)
    seq = torch.export.Dim("seq", min=2, max=64)
    ep = torch.export.export(M(), (q, k, v), dynamic_shapes=({1: seq}, {1: seq}, {1: seq}))
    q2, k2, v2 = qkv(s=11, n_kv=1, d=16, d_v=8)
    assert_close(ep.module()(q2, k2, v2), reference(q2, k2, v2, 0.25, window=2))
