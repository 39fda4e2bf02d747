"""The fused RoPE + paged decode attention kernel on the GPU at the Llama-3.2-1B shape (32 q heads,
8 KV heads, head dim 64, page size 64, bf16), contexts 1..2048, against autodeploy::cached_attention_rope;
CUDA-graph replays (the split merge's counters must reset on every launch); and the whole pipeline on
a tiny Llama picking the fused Triton op.

    PYTHONPATH=$PWD python -m pytest -q tests/gpu/test_triton_cached_attention_rope.py
"""

from __future__ import annotations

import pytest
import torch

if not torch.cuda.is_available():  # also keeps the compiled kernels from being defined on a CPU run
    pytest.skip("needs CUDA", allow_module_level=True)

import autodeploy.backends.triton  # noqa: E402,F401
import autodeploy.ops  # noqa: E402,F401
from autodeploy.backends.triton import paged_attention_decode_rope  # noqa: E402
from tests.backends.triton.paged import make_step  # noqa: E402
from tests.helpers.tolerances import assert_close  # noqa: E402

pytestmark = pytest.mark.gpu
BF16 = torch.bfloat16
SHAPE = dict(n=32, n_kv=8, d=64)
op = torch.ops.autodeploy.triton_cached_attention_rope


def tables(info, d_rot=64, theta=500000.0):
    """cos / sin [T, d_rot] at each token's position, Llama-3 style base (bf16, like the model's)."""
    pos = torch.cat([torch.arange(int(p), int(p) + int(s)) for p, s in zip(info.input_pos, info.seq_lens)])
    inv = 1.0 / (theta ** (torch.arange(0, d_rot, 2).float() / d_rot))
    ang = pos.float()[:, None] * inv
    emb = torch.cat([ang, ang], -1).cuda()
    return emb.cos().to(BF16), emb.sin().to(BF16)


def reference(step, cos, sin, interleaved=False, sinks=None, window=None, softcap=None):
    q, k, v, kc, vc, *meta = step.args()
    up = [t.float() for t in (q, k, v, kc, vc)]
    out = torch.ops.autodeploy.cached_attention_rope(*up, *meta, cos.float(), sin.float(), interleaved,
                                                      None if sinks is None else sinks.float(), None, window, softcap)
    return out, up[3], up[4]


def _features(name):
    return {"plain": {}, "window+sinks+softcap": dict(window=256, softcap=30.0, sinks=True)}[name]


@pytest.mark.parametrize("features", ["plain", "window+sinks+softcap"])
@pytest.mark.parametrize("interleaved", [False, True], ids=["rotate_half", "interleaved"])
@pytest.mark.parametrize("batch", [1, 16, 64])  # 1 and 16 split the context (merged in-launch); 64 does not
def test_decode_matches_reference(batch, interleaved, features):
    torch.manual_seed(batch)
    ctx = [1537] if batch == 1 else [1, 2048, 64, 65] + torch.randint(1, 2049, (batch - 4,)).tolist()
    step = make_step([(1, c - 1) for c in ctx], **SHAPE, page_size=64, dtype=BF16)
    table = step.info.page_table  # as wide as a CUDA-graph bucket's (2048 keys): the split count follows from it
    step.info.page_table = torch.cat([table, table.new_zeros(batch, 32 - table.shape[1])], 1)
    cos, sin = tables(step.info)
    f = _features(features)
    sinks = torch.randn(SHAPE["n"], device="cuda").to(BF16) if f.get("sinks") else None
    args = step.args()
    out = op(*args, cos, sin, interleaved, sinks, None, f.get("window"), f.get("softcap"))
    want, kc, vc = reference(step, cos, sin, interleaved, sinks, f.get("window"), f.get("softcap"))
    assert_close(out, want.to(BF16), BF16)
    assert_close(args[3], kc.to(BF16), BF16)  # rotated new keys (rounded once, as triton_rope does)
    assert torch.equal(args[4], vc.to(BF16))
    assert not paged_attention_decode_rope.tickets(torch.device("cuda"), 1).any()


def test_kv_lines_kept_in_l2_give_the_same_result(monkeypatch):
    """AUTODEPLOY_ATTN_KV_KEEP=1 marks the prefetched KV lines evict_last in L2: a hint, so the output and the
    caches are bit-identical to the default launch's."""
    torch.manual_seed(0)
    outs = []
    for keep in ("0", "1"):
        monkeypatch.setenv("AUTODEPLOY_ATTN_KV_KEEP", keep)
        torch.manual_seed(0)
        step = make_step([(1, 700)], **SHAPE, page_size=64, dtype=BF16)
        cos, sin = tables(step.info)
        args = step.args()
        outs.append((op(*args, cos, sin, False, None, None, None, None), args[3].clone(), args[4].clone()))
    assert paged_attention_decode_rope.kv_prefetch_enabled(torch.device("cuda"))
    for a, b in zip(*outs):
        assert torch.equal(a, b)


@pytest.mark.parametrize("batch", [1, 16])
def test_small_tile_matches_reference(batch, monkeypatch):
    """AUTODEPLOY_ATTN_SMALL_TILE=1: 16-key tiles at head dim 128 in 128 registers a thread (maxnreg), against the
    reference, the caches written as by the default launch."""
    monkeypatch.setenv("AUTODEPLOY_ATTN_SMALL_TILE", "1")
    torch.manual_seed(batch)
    ctx = [700] if batch == 1 else [1, 300, 64, 65] + torch.randint(1, 1000, (batch - 4,)).tolist()
    step = make_step([(1, c - 1) for c in ctx], n=32, n_kv=8, d=128, page_size=64, dtype=BF16)
    cos, sin = tables(step.info, d_rot=128)
    args = step.args()
    out = op(*args, cos, sin, False, None, None, None, None)
    want, kc, vc = reference(step, cos, sin)
    assert_close(out, want.to(BF16), BF16)
    assert_close(args[3], kc.to(BF16), BF16)
    assert torch.equal(args[4], vc.to(BF16))
    assert not paged_attention_decode_rope.tickets(torch.device("cuda"), 1).any()


def test_prefill_and_mixed_steps_take_rope_then_the_unfused_path():
    step = make_step([(700, 0), (300, 900), (1, 50), (1, 2000)], **SHAPE, page_size=64, dtype=BF16)
    cos, sin = tables(step.info)
    out = op(*step.args(), cos, sin, False, None, None, None, None)
    want, _, _ = reference(step, cos, sin)
    assert_close(out, want.to(BF16), BF16)


def test_replays_in_a_cuda_graph_with_new_lengths():
    """16 launches (a 1B model's layers, one cache pair each) captured once at b = 1, 64 splits;
    replayed twice with other contexts: the in-launch merge must reset its counters every time."""
    layers = 16
    step = make_step([(1, 1500)], **SHAPE, page_size=64, dtype=BF16, extra_pages=8)
    info = step.info
    table = torch.cat([info.page_table, info.page_table.new_zeros(1, 128 - info.page_table.shape[1])], 1)  # 8192 keys
    q, k, v, kc0, vc0 = step.args()[:5]
    caches = [(kc0.clone(), vc0.clone()) for _ in range(layers)]
    lens, pos, slots = info.cache_lens.clone(), info.input_pos.clone(), info.slot_mapping.clone()
    cos, sin = tables(info)
    cos_buf, sin_buf = cos.clone(), sin.clone()
    meta = (info.seq_lens, info.cu_seqlens, pos, lens, table, slots)

    def run():
        return [op(q, k, v, kc, vc, *meta, cos_buf, sin_buf, False, None, None, None, None) for kc, vc in caches]

    run()  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = run()
    for ctx in (1201, 77):
        lens.fill_(ctx)
        pos.fill_(ctx - 1)
        slots.copy_((table[0, (ctx - 1) // 64] * 64 + (ctx - 1) % 64).long().reshape(1))
        step.info.cache_lens, step.info.input_pos, step.info.slot_mapping = lens.clone(), pos.clone(), slots.clone()
        step.info.page_table = table
        c, s = tables(step.info)
        cos_buf.copy_(c)
        sin_buf.copy_(s)
        step.k_cache, step.v_cache = caches[3][0].clone(), caches[3][1].clone()  # layer 3's cache before the replay
        want, _, _ = reference(step, c, s)
        graph.replay()
        assert_close(outs[3], want.to(BF16), BF16)
        assert not paged_attention_decode_rope.tickets(torch.device("cuda"), 1).any()


def test_tiny_llama_pipeline_uses_the_fused_kernel(tmp_path):
    from autodeploy.profiler.bench import build_runtime
    from autodeploy.runtime.sampling import SamplingParams
    from tests.helpers.tiny_models import save_tiny

    save_tiny("llama", tmp_path)
    overrides = ["runtime.dtype=bfloat16", "runtime.max_batch_size=4", "runtime.max_seq_len=256",
                 "runtime.max_num_tokens=256", "runtime.kv_num_pages=64", "runtime.cuda_graph_batch_sizes=[1,2,4]"]
    rt = build_runtime(str(tmp_path), "h100", overrides)
    targets = {n.target for n in rt.model.cached.gm.graph.nodes if n.op == "call_function"}
    assert torch.ops.autodeploy.triton_cached_attention_rope.default in targets
    assert torch.ops.autodeploy.cached_attention.default not in targets
    outs = rt.generate([[5, 17, 33, 2, 9], [100, 3]], SamplingParams(max_tokens=16, ignore_eos=True))
    assert all(o.error is None and len(o.token_ids) == 16 for o in outs)
