"""Random paged-KV steps for the attention kernel tests: history already cached, pages shuffled."""

from __future__ import annotations

from dataclasses import dataclass

import torch

import autodeploy.ops  # noqa: F401
from autodeploy.runtime.sequence_info import SequenceInfo
from tests.backends.triton.cases import DEVICE, randn


@dataclass
class Step:
    info: SequenceInfo
    q: torch.Tensor  # [T, n, d]
    k: torch.Tensor  # [T, n_kv, d]
    v: torch.Tensor  # [T, n_kv, d_v]
    k_cache: torch.Tensor  # [num_pages, page_size, n_kv, d]
    v_cache: torch.Tensor  # [num_pages, page_size, n_kv, d_v]

    def args(self):
        """The cached_attention arguments up to slot_mapping, with fresh copies of the caches."""
        i = self.info
        return (self.q, self.k, self.v, self.k_cache.clone(), self.v_cache.clone(), i.seq_lens, i.cu_seqlens,
                i.input_pos, i.cache_lens, i.page_table, i.slot_mapping)


def make_step(chunks, n=4, n_kv=2, d=16, d_v=None, page_size=8, dtype=torch.float32, extra_pages=3) -> Step:
    """chunks: per sequence (new tokens, tokens already cached). Pages are a random permutation of the
    pool, so neighbouring pages of a sequence are never neighbours in memory."""
    d_v = d if d_v is None else d_v
    need = [(pos + new + page_size - 1) // page_size for new, pos in chunks]
    num_pages = sum(need) + extra_pages
    perm = torch.randperm(num_pages).tolist()
    seqs, used = [], 0
    for (new, pos), p in zip(chunks, need):
        seqs.append((list(range(new)), pos, perm[used : used + p]))
        used += p
    info = SequenceInfo.build(seqs, page_size, device=DEVICE)
    t = info.num_tokens
    return Step(
        info=info,
        q=randn(t, n, d, dtype=dtype),
        k=randn(t, n_kv, d, dtype=dtype),
        v=randn(t, n_kv, d_v, dtype=dtype),
        k_cache=randn(num_pages, page_size, n_kv, d, dtype=dtype),
        v_cache=randn(num_pages, page_size, n_kv, d_v, dtype=dtype),
    )


def reference(step: Step, sinks=None, scale=None, window=None, softcap=None):
    """autodeploy::cached_attention in fp32 -> (out [T, n, d_v], k_cache, v_cache after the write)."""
    q, k, v, kc, vc, *meta = step.args()
    up = [t.float() for t in (q, k, v, kc, vc)]
    out = torch.ops.autodeploy.cached_attention(
        *up, *meta, None if sinks is None else sinks.float(), scale, window, softcap)
    return out, up[3], up[4]
