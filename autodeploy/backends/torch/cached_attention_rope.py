"""autodeploy::cached_attention_rope — RoPE on the step's q and k, then cached attention (CPU reference).

    q [T, n, d], k [T, n_kv, d], v [T, n_kv, d_v]       the step's new tokens, before RoPE
    k_cache / v_cache [num_pages, page_size, n_kv, d(_v)] (mutated), seq_lens … slot_mapping as in
        autodeploy::cached_attention
    cos / sin [T, d_rot]                                 each token's row of the RoPE tables
    interleaved                                          as in autodeploy::rope
    -> out [T, n, d_v]

exactly `cached_attention(*rope(q, k, cos, sin, interleaved), v, ...)`: the cache stores rotated
keys, as the unfused pair does. transforms/fuse_rope_cached_attention.py makes it out of that pair
so that a backend can do both in one launch at decode (backends/triton/cached_attention_rope.py:
one kernel per layer instead of four, ~2 us each on an H100). This reference only composes the two
reference ops, so on the CPU the fused graph computes bit for bit what the unfused one did.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from autodeploy.backends.torch.cached_attention import cached_attention
from autodeploy.backends.torch.rope import rope


@torch.library.custom_op("autodeploy::cached_attention_rope", mutates_args=("k_cache", "v_cache"))
def cached_attention_rope(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    seq_lens: Tensor,
    cu_seqlens: Tensor,
    input_pos: Tensor,
    cache_lens: Tensor,
    page_table: Tensor,
    slot_mapping: Tensor,
    cos: Tensor,
    sin: Tensor,
    interleaved: bool = False,
    sinks: Optional[Tensor] = None,
    scale: Optional[float] = None,
    sliding_window: Optional[int] = None,
    logit_softcap: Optional[float] = None,
) -> Tensor:
    """rope(q, k) with cos / sin [T, d_rot], then cached attention of the step -> [T, n, d_v]."""
    q_rot, k_rot = rope(q[None], k[None], cos[None], sin[None], interleaved)  # [1, T, n(_kv), d]
    return cached_attention(q_rot[0], k_rot[0], v, k_cache, v_cache, seq_lens, cu_seqlens, input_pos, cache_lens,
                            page_table, slot_mapping, sinks, scale, sliding_window, logit_softcap)


@cached_attention_rope.register_fake
def _(q, k, v, k_cache, v_cache, seq_lens, cu_seqlens, input_pos, cache_lens, page_table, slot_mapping, cos, sin,
      interleaved=False, sinks=None, scale=None, sliding_window=None, logit_softcap=None):
    torch._check(q.shape[1] % k.shape[1] == 0, lambda: "cached_attention_rope: n must be a multiple of n_kv")
    torch._check(cos.shape[-1] <= q.shape[-1], lambda: "cached_attention_rope: d_rot exceeds the head dim")
    return q.new_empty(q.shape[0], q.shape[1], v_cache.shape[-1])
