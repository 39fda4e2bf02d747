"""Triton RoPE (rotate_half and interleaved, partial rotary, in place) vs the canonical autodeploy::rope."""

from __future__ import annotations

import pytest
import torch

import autodeploy.ops  # noqa: F401
from autodeploy.backends.triton import rope
from tests.backends.triton.cases import dtypes, randn
from tests.helpers.tolerances import assert_close

reference = torch.ops.autodeploy.rope


def tables(b, s, d_rot, dtype=torch.float32, base=10000.0):
    """HF-style cos / sin [b, s, d_rot] = cat(freqs, freqs) at positions 3.. (not starting at 0)."""
    inv = 1.0 / base ** (torch.arange(0, d_rot, 2).float() / d_rot)
    pos = torch.arange(3, 3 + s).float()[None, :, None] + torch.arange(b).float()[:, None, None] * 7
    freqs = pos * inv  # [b, s, d_rot / 2]
    emb = torch.cat([freqs, freqs], dim=-1)
    dev = randn(1).device
    return emb.cos().to(dev, dtype), emb.sin().to(dev, dtype)


@dtypes
@pytest.mark.parametrize("interleaved", [False, True], ids=["rotate_half", "interleaved"])
@pytest.mark.parametrize("d_rot", [16, 8], ids=["full", "partial"])
def test_matches_reference(interleaved, d_rot, dtype):
    q, k = randn(2, 3, 4, 16, dtype=dtype), randn(2, 3, 2, 16, dtype=dtype)
    cos, sin = tables(2, 3, d_rot, dtype)
    q_out, k_out = torch.ops.autodeploy.triton_rope(q, k, cos, sin, interleaved)
    q_ref, k_ref = reference(q, k, cos, sin, interleaved)
    assert_close(q_out, q_ref)
    assert_close(k_out, k_ref)


@dtypes
@pytest.mark.parametrize("interleaved", [False, True], ids=["rotate_half", "interleaved"])
def test_in_place_on_views_of_fused_qkv(interleaved, dtype):
    n, n_kv, d = 4, 2, 32
    qkv = randn(1, 5, n + 2 * n_kv, d, dtype=dtype)  # one fused projection; q and k are strided views
    q, k = qkv[:, :, :n], qkv[:, :, n : n + n_kv]
    v_before = qkv[:, :, n + n_kv :].clone()
    cos, sin = tables(1, 5, d)  # fp32 tables, cast to q's dtype like the reference does
    q_ref, k_ref = reference(q.clone(), k.clone(), cos, sin, interleaved)
    torch.ops.autodeploy.triton_rope_(q, k, cos, sin, interleaved)
    assert_close(q, q_ref)
    assert_close(k, k_ref)
    torch.testing.assert_close(qkv[:, :, n + n_kv :], v_before, rtol=0, atol=0)  # v untouched


def test_many_heads_span_head_blocks_and_batch_broadcast():
    q, k = randn(2, 2, 96, 8), randn(2, 2, 8, 8)  # 104 heads: two programs of 64 per token
    cos, sin = tables(1, 2, 8)  # batch 1 broadcast over b = 2
    for got, want in zip(torch.ops.autodeploy.triton_rope(q, k, cos, sin, False), reference(q, k, cos, sin, False)):
        assert_close(got, want)


def test_unsupported():
    q, k = randn(1, 2, 2, 8), randn(1, 2, 1, 8)
    cos, sin = tables(1, 2, 10)
    assert not rope.supports(q, k, cos, sin)  # d_rot 10 > head dim 8
    with pytest.raises(NotImplementedError, match="rotary dim"):
        torch.ops.autodeploy.triton_rope(q, k, cos, sin, False)
    assert not rope.supports(q, k.double(), *tables(1, 2, 8))


def test_opcheck_fake_and_schema():
    q, k = randn(1, 3, 2, 8), randn(1, 3, 1, 8)
    cos, sin = tables(1, 3, 8)
    torch.library.opcheck(torch.ops.autodeploy.triton_rope.default, (q, k, cos, sin, True),
                          test_utils=("test_schema", "test_faketensor"))
    torch.library.opcheck(torch.ops.autodeploy.triton_rope_.default, (q.clone(), k.clone(), cos, sin, False),
                          test_utils=("test_schema", "test_faketensor"))
