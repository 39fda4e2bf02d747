"""Triton paged decode attention (GQA-packed, split-K + merge) vs autodeploy::cached_attention."""

from __future__ import annotations

import pytest
import torch

from autodeploy.backends.triton import paged_attention_decode
from autodeploy.backends.triton.paged_attention_decode import choose_num_splits, decode
from tests.backends.triton.cases import dtypes, randn
from tests.backends.triton.paged import make_step, reference
from tests.helpers.tolerances import assert_close

DECODES = [(1, 0), (1, 36), (1, 69)]  # one new token after 0, 36 and 69 cached ones (window < context)


def run_decode(step, **kw):
    """Write the step's k / v with the reference's write, then run only the decode kernel."""
    ref_out, kc, vc = reference(step, kw.get("sinks"), kw.get("scale"), kw.get("sliding_window"),
                                kw.get("logit_softcap"))
    i = step.info
    kw.setdefault("scale", step.q.shape[-1] ** -0.5)
    out = decode(step.q, kc.to(step.q.dtype), vc.to(step.q.dtype), i.page_table, i.cache_lens, **kw)
    return out, ref_out


@pytest.mark.parametrize("num_splits", [1, 3, 8], ids=lambda s: f"splits{s}")
@pytest.mark.parametrize("n,n_kv", [(4, 4), (4, 2), (6, 2), (4, 1)], ids=["mha", "gqa", "gqa3", "mqa"])
def test_heads_and_splits(n, n_kv, num_splits):
    step = make_step(DECODES, n=n, n_kv=n_kv)
    out, ref = run_decode(step, num_splits=num_splits, block_n=16)
    assert_close(out, ref)


@pytest.mark.parametrize("num_splits", [1, 4], ids=lambda s: f"splits{s}")
@pytest.mark.parametrize("feature", ["window", "softcap", "sinks", "all"])
def test_window_softcap_sinks(feature, num_splits):
    step = make_step(DECODES, n=4, n_kv=2)
    step.q.mul_(3.0)  # larger logits so the softcap bends them
    kw = dict(num_splits=num_splits, block_n=16)
    if feature in ("window", "all"):
        kw["sliding_window"] = 20
    if feature in ("softcap", "all"):
        kw["logit_softcap"] = 4.0
    if feature in ("sinks", "all"):
        kw["sinks"] = randn(4, scale=2.0)
    out, ref = run_decode(step, **kw)
    assert_close(out, ref)
    plain, _ = run_decode(step, num_splits=num_splits, block_n=16)
    assert (out.float() - plain.float()).abs().max() > 1e-3  # the feature changed the result


def test_value_dim_differs_and_small_head_dim():
    step = make_step(DECODES, n=4, n_kv=2, d=8, d_v=24)  # both padded to 16 / 32 lanes for tl.dot
    out, ref = run_decode(step, num_splits=2, block_n=16, scale=0.3)
    assert out.shape == (3, 4, 24)
    assert_close(out, ref)


@dtypes
def test_op_picks_decode_path(dtype):
    step = make_step(DECODES, n=4, n_kv=2, dtype=dtype)
    args = step.args()
    out = torch.ops.autodeploy.triton_cached_attention(*args, None, 0.25, None, None)
    ref, kc, vc = reference(step, scale=0.25)
    assert_close(out, ref.to(dtype), dtype)
    assert_close(args[3], kc.to(dtype))  # the new keys landed where the reference put them
    assert_close(args[4], vc.to(dtype))


def test_split_count_is_static_and_bounded(monkeypatch):
    cpu = torch.device("cpu")  # the interpreter pretends to have 4 SMs
    assert choose_num_splits(1, 2, 4096, cpu) == 8  # 4 waves of 4 SMs = 16 programs = 2 KV heads x 8 splits
    assert choose_num_splits(1, 2, 200, cpu) == 4  # no split below 64 keys of the table's reach
    assert choose_num_splits(64, 8, 4096, cpu) == 1  # the batch fills the machine alone
    assert choose_num_splits(1, 1, 1 << 20, cpu) == 16
    monkeypatch.setattr(paged_attention_decode, "num_sms", lambda device: 1000)
    assert choose_num_splits(1, 1, 1 << 20, cpu) == paged_attention_decode.MAX_SPLITS


def test_empty_sequence_gives_zeros():
    q = randn(2, 4, 16)
    kc = vc = randn(3, 8, 2, 16)
    pt = torch.zeros(2, 1, dtype=torch.int32, device=q.device)
    lens = torch.tensor([0, 0], dtype=torch.int32, device=q.device)
    for splits in (1, 2):
        out = decode(q, kc, vc, pt, lens, 0.25, num_splits=splits)
        assert torch.equal(out, torch.zeros_like(out))
