"""Triton fused RoPE + paged attention (one decode launch per layer) vs autodeploy::cached_attention_rope."""

from __future__ import annotations

import pytest
import torch

import autodeploy.backends.triton as triton_backends
from autodeploy.backends.triton import cached_attention_rope, paged_attention_decode_rope
from tests.backends.triton.cases import DEVICE, dtypes, randn
from tests.backends.triton.paged import make_step
from tests.helpers.tolerances import assert_close

# one new token after 0, 36, 69 and 15 cached ones: page size 8, so the new key sits mid-page, at a
# page's first slot (ctx 37 -> position 36 = 4 * 8 + 4, ctx 16 -> position 15 = the last slot of page 1)
DECODES = [(1, 0), (1, 36), (1, 69), (1, 15)]
op = torch.ops.autodeploy.triton_cached_attention_rope


def tables(step, d_rot, interleaved=False):
    """cos / sin [T, d_rot] at each token's absolute position (HF's cat(freqs, freqs) layout)."""
    i = step.info
    pos = torch.cat([torch.arange(int(p), int(p) + int(s)) for p, s in zip(i.input_pos, i.seq_lens)]).float()
    inv = 1.0 / (100.0 ** (torch.arange(0, d_rot, 2).float() / d_rot))
    ang = pos[:, None] * inv[None, :]  # [T, d_rot / 2]
    emb = torch.cat([ang, ang], -1)
    return emb.cos().to(DEVICE), emb.sin().to(DEVICE)


def reference(step, cos, sin, interleaved=False, sinks=None, scale=None, window=None, softcap=None):
    """autodeploy::cached_attention_rope in fp32 -> (out, k_cache, v_cache after the write)."""
    q, k, v, kc, vc, *meta = step.args()
    up = [t.float() for t in (q, k, v, kc, vc)]
    out = torch.ops.autodeploy.cached_attention_rope(*up, *meta, cos.float(), sin.float(), interleaved,
                                                      None if sinks is None else sinks.float(), scale, window, softcap)
    return out, up[3], up[4]


def run(step, cos, sin, interleaved=False, num_splits=None, **kw):
    """The Triton op; num_splits given: that many splits of 16-key blocks (up to 5 hold keys at ctx 70)."""
    args = step.args()
    tuning = {} if num_splits is None else dict(num_splits=num_splits, block_n=16)
    out = cached_attention_rope.launch(*args, cos, sin, interleaved, kw.get("sinks"), kw.get("scale"),
                                       kw.get("window"), kw.get("softcap"), **tuning)
    return out, args[3], args[4]


def check(step, cos, sin, interleaved=False, num_splits=None, **kw):
    out, kc, vc = run(step, cos, sin, interleaved, num_splits, **kw)
    want, want_kc, want_vc = reference(step, cos, sin, interleaved, **kw)
    dtype = step.q.dtype
    assert_close(out, want.to(dtype), dtype)
    assert_close(kc, want_kc.to(dtype), dtype)  # the rotated new keys landed at their slots
    assert torch.equal(vc, want_vc.to(dtype))
    return out


@pytest.mark.parametrize("num_splits", [1, 3, 8], ids=lambda s: f"splits{s}")
@pytest.mark.parametrize("interleaved", [False, True], ids=["rotate_half", "interleaved"])
@pytest.mark.parametrize("n,n_kv", [(4, 2), (6, 2), (4, 4)], ids=["gqa", "gqa3", "mha"])
def test_heads_splits_layouts(n, n_kv, interleaved, num_splits):
    step = make_step(DECODES, n=n, n_kv=n_kv)
    cos, sin = tables(step, 16)
    check(step, cos, sin, interleaved, num_splits)


@pytest.mark.parametrize("interleaved", [False, True], ids=["rotate_half", "interleaved"])
def test_partial_rotary(interleaved):
    step = make_step(DECODES, n=4, n_kv=2, d=32)
    cos, sin = tables(step, 16)  # only the first 16 of 32 dims rotate
    check(step, cos, sin, interleaved, num_splits=4)


@pytest.mark.parametrize("num_splits", [1, 4], ids=lambda s: f"splits{s}")
@pytest.mark.parametrize("feature", ["window", "softcap", "sinks", "all"])
def test_window_softcap_sinks(feature, num_splits):
    step = make_step(DECODES, n=4, n_kv=2)
    step.q.mul_(3.0)  # larger logits so the softcap bends them
    cos, sin = tables(step, 16)
    kw = {}
    if feature in ("window", "all"):
        kw["window"] = 20
    if feature in ("softcap", "all"):
        kw["softcap"] = 4.0
    if feature in ("sinks", "all"):
        kw["sinks"] = randn(4, scale=2.0)
    out = check(step, cos, sin, num_splits=num_splits, **kw)
    plain, _, _ = run(step, cos, sin, num_splits=num_splits)
    assert (out.float() - plain.float()).abs().max() > 1e-3  # the feature changed the result


def test_consecutive_launches_reset_the_tickets():
    """Splits merge through counters the last split sets back to 0: a second launch (a CUDA-graph
    replay) on other data must give its own right answer, and leave the counters at zero."""
    step = make_step(DECODES, n=4, n_kv=2)
    cos, sin = tables(step, 16)
    check(step, cos, sin, num_splits=8)
    counters = paged_attention_decode_rope.tickets(torch.device(DEVICE), 1)
    assert not counters.any()
    step.q.copy_(randn(*step.q.shape))
    step.k.copy_(randn(*step.k.shape))
    check(step, cos, sin, num_splits=8)
    assert not counters.any()


def test_default_split_count_from_static_shapes():
    step = make_step([(1, 100)], n=4, n_kv=1, extra_pages=40)  # b=1, one KV head: the interpreter's 4 SMs want splits
    table = step.info.page_table
    step.info.page_table = torch.cat([table, table.new_zeros(1, 40)], 1)  # a wide table: reach 8 * 54 keys
    cos, sin = tables(step, 16)
    check(step, cos, sin)  # 6 splits (432 keys / 64) of which 2 hold keys


@dtypes
def test_op_decode_and_prefill_paths(dtype):
    for chunks in (DECODES, [(5, 3), (1, 20), (9, 0)]):  # decode-only step, then a mixed one
        step = make_step(chunks, n=4, n_kv=2, dtype=dtype)
        cos, sin = tables(step, 16)
        args = step.args()
        out = op(*args, cos.to(dtype), sin.to(dtype), False, None, 0.25, None, None)
        want, kc, vc = reference(step, cos.to(dtype), sin.to(dtype), scale=0.25)
        assert_close(out, want.to(dtype), dtype)
        assert_close(args[3], kc.to(dtype), dtype)
        assert torch.equal(args[4], vc.to(dtype))


def test_strided_views_of_a_fused_qkv():
    step = make_step(DECODES, n=4, n_kv=2)
    t = step.q.shape[0]
    qkv = torch.cat([step.q.reshape(t, -1), step.k.reshape(t, -1), step.v.reshape(t, -1)], 1)
    step.q, step.k, step.v = (x.view(t, -1, 16) for x in qkv.split([64, 32, 32], 1))
    cos, sin = tables(step, 16)
    check(step, cos, sin, num_splits=3)


def test_unsupported_reasons():
    step = make_step(DECODES, n=4, n_kv=2)
    cos, sin = tables(step, 16)
    q, k, v, kc, vc = step.args()[:5]
    assert cached_attention_rope.supports(q, k, v, kc, vc, cos, sin)
    assert "cos / sin" in cached_attention_rope.unsupported_reason(q, k, v, kc, vc, cos[None], sin[None])
    odd = cos[:, :15]
    assert "rotary dim" in cached_attention_rope.unsupported_reason(q, k, v, kc, vc, odd, odd)
    # backend selection calls the package's table with the op's arguments in schema order
    check = triton_backends.SUPPORTS["cached_attention_rope"]
    assert check(*step.args(), cos, sin, False, None, 0.25, None, None)
    assert not check(*step.args(), cos, sin, False, randn(3), 0.25, None, None)  # sinks must be [n]


def test_small_tile_is_a_gpu_setting(monkeypatch):
    """AUTODEPLOY_ATTN_SMALL_TILE=1 (16-key tiles under a register cap) applies to GPU launches only; the
    result matches the reference either way."""
    monkeypatch.setenv("AUTODEPLOY_ATTN_SMALL_TILE", "1")
    assert not paged_attention_decode_rope.small_tile(torch.device("cpu"))
    assert paged_attention_decode_rope.small_tile(torch.device(DEVICE)) == (DEVICE == "cuda")
    step = make_step([(1, 36)], dtype=torch.float32)
    cos, sin = tables(step, step.q.shape[-1])
    check(step, cos, sin)
