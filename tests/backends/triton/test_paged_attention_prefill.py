"""Triton paged prefill / mixed-batch attention vs autodeploy::cached_attention: whole and chunked
prefills next to decodes, GQA, window, softcap, sinks, several query blocks per sequence."""

from __future__ import annotations

import pytest
import torch

from autodeploy.backends.triton.paged_attention_prefill import prefill
from tests.backends.triton.cases import dtypes, randn
from tests.backends.triton.paged import make_step, reference
from tests.helpers.tolerances import assert_close

# (new tokens, already cached): a whole prefill, a chunked prefill crossing pages, two decodes
MIXED = [(13, 0), (9, 21), (1, 30), (1, 5)]


def run_prefill(step, **kw):
    ref_out, kc, vc = reference(step, kw.get("sinks"), kw.get("scale"), kw.get("sliding_window"),
                                kw.get("logit_softcap"))
    i = step.info
    kw.setdefault("scale", step.q.shape[-1] ** -0.5)
    out = prefill(step.q, kc.to(step.q.dtype), vc.to(step.q.dtype), i.page_table, i.cu_seqlens, i.input_pos,
                  i.cache_lens, **kw)
    return out, ref_out


@pytest.mark.parametrize("n,n_kv", [(4, 4), (4, 2), (6, 2), (4, 1)], ids=["mha", "gqa", "gqa3", "mqa"])
def test_mixed_batch_heads(n, n_kv):
    step = make_step(MIXED, n=n, n_kv=n_kv)
    # 16-row blocks: 4 tokens per block at G = 4, so the 13-token prefill spans 4 blocks
    out, ref = run_prefill(step, block_m=16, block_n=16)
    assert_close(out, ref)


@pytest.mark.parametrize("feature", ["window", "softcap", "sinks", "all"])
def test_window_softcap_sinks(feature):
    step = make_step(MIXED, n=4, n_kv=2)
    step.q.mul_(3.0)
    kw = dict(block_m=16, block_n=16)
    if feature in ("window", "all"):
        kw["sliding_window"] = 6  # shorter than the prefills: early key tiles are skipped or partly masked
    if feature in ("softcap", "all"):
        kw["logit_softcap"] = 4.0
    if feature in ("sinks", "all"):
        kw["sinks"] = randn(4, scale=2.0)
    out, ref = run_prefill(step, **kw)
    assert_close(out, ref)
    plain, _ = run_prefill(step, block_m=16, block_n=16)
    assert (out.float() - plain.float()).abs().max() > 1e-3


def test_window_of_one_returns_own_value():
    step = make_step([(7, 0), (3, 4)], n=2, n_kv=2)
    out, _ = run_prefill(step, sliding_window=1, block_m=16, block_n=16)
    assert_close(out, step.v)  # each query sees only its own key: softmax of one = 1


def test_value_dim_differs_and_default_blocks():
    step = make_step([(20, 0), (5, 11)], n=4, n_kv=2, d=16, d_v=8)
    out, ref = run_prefill(step, scale=0.2)
    assert out.shape == (25, 4, 8)
    assert_close(out, ref)


@dtypes
def test_op_picks_prefill_path(dtype):
    step = make_step(MIXED, n=4, n_kv=2, dtype=dtype)
    args = step.args()
    sinks = randn(4, dtype=dtype)
    out = torch.ops.autodeploy.triton_cached_attention(*args, sinks, None, 16, 30.0)
    ref, kc, vc = reference(step, sinks=sinks, window=16, softcap=30.0)
    assert_close(out, ref.to(dtype), dtype)
    assert_close(args[3], kc.to(dtype))
    assert_close(args[4], vc.to(dtype))


def test_opcheck_fake_and_schema():
    step = make_step([(3, 0), (1, 4)], n=2, n_kv=1)
    torch.library.opcheck(torch.ops.autodeploy.triton_cached_attention.default, step.args() + (None, 0.25, None, None),
                          test_utils=("test_schema", "test_faketensor"))
