"""autodeploy::cached_attention vs full attention over each whole sequence, under random page assignments.

Every test builds sequences of known history, runs their steps (whole prefill, chunked prefill,
decode, or a mix of all in one call) through the paged op, and compares each step's outputs with
the canonical op's reference (tests/backends/test_attention.reference) on the whole sequence.
"""

from __future__ import annotations

import pytest
import torch

import autodeploy.ops  # noqa: F401
from autodeploy.runtime.sequence_info import SequenceInfo
from tests.backends.test_attention import reference
from tests.helpers.tolerances import assert_close

cached_attention = torch.ops.autodeploy.cached_attention

PAGE = 4
NUM_PAGES = 32


class Seq:
    """One sequence: its full q / k / v history and the pages it owns (random, disjoint)."""

    def __init__(self, length, pages, n=4, n_kv=2, d=16, d_v=16, q_scale=1.0):
        self.q = torch.randn(length, n, d) * q_scale
        self.k = torch.randn(length, n_kv, d)
        self.v = torch.randn(length, n_kv, d_v)
        self.pages = pages
        self.done = 0  # tokens already in the cache


def make_seqs(lengths, gen, **kw):
    perm = torch.randperm(NUM_PAGES, generator=gen).tolist()
    seqs = []
    for length in lengths:
        need = -(-length // PAGE)
        seqs.append(Seq(length, perm[:need], **kw))
        perm = perm[need:]
    return seqs


def caches(n_kv=2, d=16, d_v=16):
    # NaN-filled: a read of a slot no step has written shows up in the output.
    return (torch.full((NUM_PAGES, PAGE, n_kv, d), float("nan")),
            torch.full((NUM_PAGES, PAGE, n_kv, d_v), float("nan")))


def run_step(seqs, counts, k_cache, v_cache, **attn):
    """One op call advancing seqs[i] by counts[i] tokens; returns {seq index: out [count, n, d_v]}."""
    active = [(i, c) for i, c in enumerate(counts) if c > 0]
    info = SequenceInfo.build(
        [(list(range(c)), seqs[i].done, seqs[i].pages) for i, c in active], PAGE
    )
    q = torch.cat([seqs[i].q[seqs[i].done : seqs[i].done + c] for i, c in active])
    k = torch.cat([seqs[i].k[seqs[i].done : seqs[i].done + c] for i, c in active])
    v = torch.cat([seqs[i].v[seqs[i].done : seqs[i].done + c] for i, c in active])
    out = cached_attention(q, k, v, k_cache, v_cache, info.seq_lens, info.cu_seqlens, info.input_pos,
                           info.cache_lens, info.page_table, info.slot_mapping, attn.get("sinks"),
                           attn.get("scale", 0.25), attn.get("window"), attn.get("softcap"))
    results = {}
    cu = info.cu_seqlens.tolist()
    for j, (i, c) in enumerate(active):
        results[i] = (seqs[i].done, out[cu[j] : cu[j + 1]])
        seqs[i].done += c
    return results


def check(seqs, results, **attn):
    for i, (start, out) in results.items():
        s = seqs[i]
        end = start + out.shape[0]
        full = reference(s.q[None, :end], s.k[None, :end], s.v[None, :end], attn.get("scale", 0.25),
                         window=attn.get("window"), softcap=attn.get("softcap"), sinks=attn.get("sinks"))[0]
        assert_close(out, full[start:end])


def run_schedule(schedule, lengths, seed=0, cache_kw=None, seq_kw=None, **attn):
    """schedule: list of steps, each a list of token counts per sequence (0 = not in this step)."""
    gen = torch.Generator().manual_seed(seed)
    seqs = make_seqs(lengths, gen, **(seq_kw or {}))
    k_cache, v_cache = caches(**(cache_kw or {}))
    for counts in schedule:
        check(seqs, run_step(seqs, counts, k_cache, v_cache, **attn), **attn)
    assert all(s.done == len(s.q) for s in seqs), "schedule must consume every token"
    return k_cache, v_cache, seqs


def test_whole_prefill_batch():
    run_schedule([[7, 5, 9]], [7, 5, 9])


def test_chunked_prefill_then_decodes():
    run_schedule([[5], [6], [1], [1], [1]], [14])


def test_decode_batch_different_lengths():
    run_schedule([[3, 9, 1], [1, 1, 1], [1, 1, 1]], [5, 11, 3])


def test_mixed_step_prefill_chunk_and_decodes():
    # step 2 mixes a chunk continuing sequence 0, a fresh prefill of 2, decodes of 1 and 3
    run_schedule([[4, 6, 0, 2], [5, 1, 7, 1], [1, 1, 1, 1]], [10, 8, 8, 4])


@pytest.mark.parametrize("n_kv", [4, 1], ids=["mha", "mqa"])
def test_head_sharing(n_kv):
    run_schedule([[6, 3], [2, 1], [1, 1]], [9, 5], cache_kw=dict(n_kv=n_kv), seq_kw=dict(n_kv=n_kv))


@pytest.mark.parametrize("window", [1, 3, 6])
def test_sliding_window_across_pages(window):
    run_schedule([[9, 2], [4, 1], [1, 1], [1, 1]], [15, 5], window=window)


def test_softcap():
    run_schedule([[6, 2], [3, 1], [1, 1]], [10, 4], seq_kw=dict(q_scale=4.0), softcap=5.0)


def test_sinks_with_window():
    run_schedule([[6, 2], [3, 1], [1, 1]], [10, 4], sinks=torch.randn(4), window=4)


def test_value_dim_differs():
    kw = dict(n_kv=4, d=24, d_v=16)
    run_schedule([[5, 3], [2, 1], [1, 1]], [8, 5], cache_kw=dict(n_kv=4, d=24, d_v=16), seq_kw=kw,
                 scale=24 ** -0.5, softcap=30.0)


def test_writes_only_own_slots():
    k_cache, v_cache, seqs = run_schedule([[5, 3], [1, 1]], [6, 4])
    used = {p for s in seqs for p in s.pages}
    free = [p for p in range(NUM_PAGES) if p not in used]
    assert torch.isnan(k_cache[free]).all() and torch.isnan(v_cache[free]).all()
    for s in seqs:
        for t in range(len(s.k)):
            page, off = s.pages[t // PAGE], t % PAGE
            assert torch.equal(k_cache[page, off], s.k[t]) and torch.equal(v_cache[page, off], s.v[t])


def test_bf16_cache():
    gen = torch.Generator().manual_seed(1)
    (seq,) = make_seqs([6], gen)
    q, k, v = seq.q.bfloat16(), seq.k.bfloat16(), seq.v.bfloat16()
    k_cache = torch.zeros(NUM_PAGES, PAGE, 2, 16, dtype=torch.bfloat16)
    v_cache = torch.zeros_like(k_cache)
    info = SequenceInfo.build([(list(range(6)), 0, seq.pages)], PAGE)
    out = cached_attention(q, k, v, k_cache, v_cache, info.seq_lens, info.cu_seqlens, info.input_pos,
                           info.cache_lens, info.page_table, info.slot_mapping, None, 0.25, None, None)
    assert out.dtype == torch.bfloat16
    expected = reference(q.float()[None], k.float()[None], v.float()[None], 0.25)[0]
    assert_close(out, expected.bfloat16())


def test_fake_output_shape():
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    with FakeTensorMode(shape_env=ShapeEnv()) as mode:
        q = mode.from_tensor(torch.empty(9, 4, 24))
        k = mode.from_tensor(torch.empty(9, 2, 24))
        v = mode.from_tensor(torch.empty(9, 2, 8))
        kc = mode.from_tensor(torch.empty(5, 4, 2, 24))
        vc = mode.from_tensor(torch.empty(5, 4, 2, 8))
        i32 = lambda *s: mode.from_tensor(torch.empty(*s, dtype=torch.int32))  # noqa: E731
        out = cached_attention(q, k, v, kc, vc, i32(2), i32(3), i32(2), i32(2), i32(2, 3),
                               mode.from_tensor(torch.empty(9, dtype=torch.long)), None, 0.2, None, None)
    assert tuple(out.shape) == (9, 4, 8)


def test_negative_slot_writes_nothing():
    gen = torch.Generator().manual_seed(2)
    seqs = make_seqs([5, 1], gen)
    k_cache, v_cache = caches()
    info = SequenceInfo.build([(list(range(5)), 0, seqs[0].pages), ([0], 0, seqs[1].pages)], PAGE)
    slots = info.slot_mapping.clone()
    slots[-1] = -1  # the second sequence is padding
    q, k, v = (torch.cat([s.q for s in seqs]), torch.cat([s.k for s in seqs]), torch.cat([s.v for s in seqs]))
    out = cached_attention(q, k, v, k_cache, v_cache, info.seq_lens, info.cu_seqlens, info.input_pos,
                           info.cache_lens, info.page_table, slots, None, 0.25, None, None)
    assert torch.isnan(k_cache[seqs[1].pages]).all() and torch.isnan(v_cache[seqs[1].pages]).all()
    assert_close(out[:5], reference(seqs[0].q[None], seqs[0].k[None], seqs[0].v[None], 0.25)[0])
