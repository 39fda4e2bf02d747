"""autodeploy::cached_attention_rope is exactly rope, then cached_attention (the pair it fuses)."""

from __future__ import annotations

import pytest
import torch

import autodeploy.ops  # noqa: F401
from autodeploy.runtime.sequence_info import SequenceInfo

ops = torch.ops.autodeploy
PAGE, NUM_PAGES, N, N_KV, D = 4, 16, 4, 2, 16


def step(chunks, gen):
    """A mixed step: per sequence (new tokens, tokens cached), pages shuffled; caches random."""
    perm = torch.randperm(NUM_PAGES, generator=gen).tolist()
    seqs = []
    for new, pos in chunks:
        need = -(-(new + pos) // PAGE)
        seqs.append((list(range(new)), pos, perm[:need]))
        perm = perm[need:]
    info = SequenceInfo.build(seqs, PAGE)
    t = info.num_tokens
    q, k, v = (torch.randn(t, h, D, generator=gen) for h in (N, N_KV, N_KV))
    kc, vc = (torch.randn(NUM_PAGES, PAGE, N_KV, D, generator=gen) for _ in range(2))
    return info, q, k, v, kc, vc


@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("d_rot", [16, 8], ids=["full", "partial"])
def test_equals_rope_then_cached_attention(d_rot, interleaved):
    gen = torch.Generator().manual_seed(0)
    info, q, k, v, kc, vc = step([(3, 5), (1, 9), (1, 0)], gen)  # a prefill chunk and two decodes
    cos, sin = torch.randn(q.shape[0], d_rot, generator=gen), torch.randn(q.shape[0], d_rot, generator=gen)
    meta = (info.seq_lens, info.cu_seqlens, info.input_pos, info.cache_lens, info.page_table, info.slot_mapping)
    sinks = torch.randn(N, generator=gen)
    kc1, vc1, kc2, vc2 = kc.clone(), vc.clone(), kc.clone(), vc.clone()

    q_rot, k_rot = ops.rope(q[None], k[None], cos[None], sin[None], interleaved)
    want = ops.cached_attention(q_rot[0], k_rot[0], v, kc1, vc1, *meta, sinks, 0.3, 6, 20.0)
    got = ops.cached_attention_rope(q, k, v, kc2, vc2, *meta, cos, sin, interleaved, sinks, 0.3, 6, 20.0)
    assert torch.equal(got, want)
    assert torch.equal(kc2, kc1) and torch.equal(vc2, vc1)
    assert not torch.equal(kc2, kc)  # the rotated keys were written


def test_fake_shape():
    from torch._subclasses.fake_tensor import FakeTensorMode

    gen = torch.Generator().manual_seed(1)
    info, q, k, v, kc, vc = step([(2, 3)], gen)
    cos = torch.randn(q.shape[0], 8)
    with FakeTensorMode(allow_non_fake_inputs=True):
        out = ops.cached_attention_rope(q, k, v[..., :8], kc, vc[..., :8], info.seq_lens, info.cu_seqlens,
                                        info.input_pos, info.cache_lens, info.page_table, info.slot_mapping, cos, cos)
    assert out.shape == (q.shape[0], N, 8)
