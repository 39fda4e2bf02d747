"""`autodeploy::triton_cached_attention_rope`: the Triton backend of `autodeploy::cached_attention_rope`.

Same schema and semantics as the reference (autodeploy/backends/torch/cached_attention_rope.py):

    q [T, n, d], k [T, n_kv, d], v [T, n_kv, d_v] (before RoPE), caches (mutated), seq_lens …
    slot_mapping, cos / sin [T, d_rot], interleaved, sinks, scale, sliding_window, logit_softcap
      -> out [T, n, d_v]

    T == b  (one token per sequence)  ->  paged_attention_decode_rope.py: ONE launch per layer
                                          (rope + kv write + attention + split merge)
    otherwise (prefill / mixed)       ->  rope.py, then cached_attention.py's path (kv write, prefill)

The path is picked from static shapes alone, as in cached_attention.py (no host sync, CUDA-graph safe).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from autodeploy.backends.triton import cached_attention, rope
from autodeploy.backends.triton._common import unit_stride
from autodeploy.backends.triton.paged_attention_decode_rope import decode_rope


def unsupported_reason(q: Tensor, k: Tensor, v: Tensor, k_cache: Tensor, v_cache: Tensor, cos: Tensor, sin: Tensor,
                       sinks: Optional[Tensor] = None) -> Optional[str]:
    """None when the kernels handle these inputs; else why not (for backend selection)."""
    why = cached_attention.unsupported_reason(q, k, v, k_cache, v_cache, sinks)
    if why:
        return why
    if cos.dim() != 2 or cos.shape[0] != q.shape[0]:
        return f"cos / sin {tuple(cos.shape)} must be [T, d_rot] with T = {q.shape[0]}"
    return rope.unsupported_reason(q[None], k[None], cos[None], sin[None])


def supports(q: Tensor, k: Tensor, v: Tensor, k_cache: Tensor, v_cache: Tensor, cos: Tensor, sin: Tensor,
             sinks: Optional[Tensor] = None) -> bool:
    return unsupported_reason(q, k, v, k_cache, v_cache, cos, sin, sinks) is None


def launch(q, k, v, k_cache, v_cache, seq_lens, cu_seqlens, input_pos, cache_lens, page_table, slot_mapping, cos, sin,
           interleaved=False, sinks=None, scale=None, sliding_window=None, logit_softcap=None, **tuning) -> Tensor:
    """tuning: decode_rope's launch settings (num_splits, block_n, ...), for tests and benchmarks."""
    why = unsupported_reason(q, k, v, k_cache, v_cache, cos, sin, sinks)
    if why:
        raise NotImplementedError(f"triton cached_attention_rope: {why}")
    q, k, v, cos, sin = (unit_stride(t) for t in (q, k, v, cos, sin))
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if q.shape[0] == seq_lens.shape[0]:
        return decode_rope(q, k, v, cos, sin, interleaved, k_cache, v_cache, slot_mapping, page_table, cache_lens,
                           scale, sliding_window, logit_softcap, sinks, **tuning)
    q_rot, k_rot = torch.empty_like(q, memory_format=torch.contiguous_format), torch.empty_like(
        k, memory_format=torch.contiguous_format)
    rope.launch(q[None], k[None], cos[None], sin[None], interleaved, q_rot[None], k_rot[None])
    return cached_attention.launch(q_rot, k_rot, v, k_cache, v_cache, seq_lens, cu_seqlens, input_pos, cache_lens,
                                   page_table, slot_mapping, sinks, scale, sliding_window, logit_softcap)


@torch.library.custom_op("autodeploy::triton_cached_attention_rope", mutates_args=("k_cache", "v_cache"))
def triton_cached_attention_rope(
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
    """rope(q, k), writes k / v into the caches, then q attends over each sequence's cache -> [T, n, d_v]."""
    return launch(q, k, v, k_cache, v_cache, seq_lens, cu_seqlens, input_pos, cache_lens, page_table, slot_mapping,
                  cos, sin, interleaved, sinks, scale, sliding_window, logit_softcap)


@triton_cached_attention_rope.register_fake
def _(q, k, v, k_cache, v_cache, seq_lens, cu_seqlens, input_pos, cache_lens, page_table, slot_mapping, cos, sin,
      interleaved=False, sinks=None, scale=None, sliding_window=None, logit_softcap=None):
    return q.new_empty(q.shape[0], q.shape[1], v_cache.shape[-1])
