"""`autodeploy::triton_cached_attention`: the Triton backend of `autodeploy::cached_attention`.

Same schema and semantics as the reference (autodeploy/backends/torch/cached_attention.py):

    q [T, n, d], k [T, n_kv, d], v [T, n_kv, d_v], k_cache / v_cache [num_pages, page_size, n_kv, d(_v)]
    (mutated), seq_lens [b], cu_seqlens [b+1], input_pos [b], cache_lens [b], page_table [b, P],
    slot_mapping [T], sinks [n] | None, scale, sliding_window, logit_softcap -> out [T, n, d_v]

    write k / v at slot_mapping             kv_cache_write.py
    T == b  (one token per sequence)   ->   paged_attention_decode.py  (GQA-packed, split-K)
    otherwise (prefill / mixed)        ->   paged_attention_prefill.py (GQA-packed, causal blocks)

The path is picked from static shapes alone (no host sync, CUDA-graph safe). T == b means a
decode-only step because SequenceInfo never holds a sequence with no new tokens (CUDA-graph padding
adds one-token decodes, see runtime/compile/metadata.py).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from autodeploy.backends.triton import kv_cache_write
from autodeploy.backends.triton._common import unit_stride, unsupported_device_or_dtype
from autodeploy.backends.triton.paged_attention_decode import decode
from autodeploy.backends.triton.paged_attention_prefill import prefill

MAX_HEAD_DIM = 256  # q / k / v tiles live in registers: [64, 256] fp32 accumulators are the limit


def unsupported_reason(q: Tensor, k: Tensor, v: Tensor, k_cache: Tensor, v_cache: Tensor,
                       sinks: Optional[Tensor] = None) -> Optional[str]:
    """None when the kernels handle these inputs; else why not (for backend selection)."""
    why = unsupported_device_or_dtype(q, k, v, k_cache, v_cache, sinks) or kv_cache_write.unsupported_reason(
        k, v, k_cache, v_cache)
    if why:
        return why
    if q.dim() != 3 or q.shape[-1] != k_cache.shape[-1]:
        return f"q {tuple(q.shape)} must be [T, n, d] with the cache's head dim {k_cache.shape[-1]}"
    n, n_kv = q.shape[1], k_cache.shape[2]
    if n % n_kv:
        return f"{n} query heads are not a multiple of {n_kv} KV heads"
    if max(q.shape[-1], v_cache.shape[-1]) > MAX_HEAD_DIM:
        return f"head dim {max(q.shape[-1], v_cache.shape[-1])} > {MAX_HEAD_DIM}"
    if sinks is not None and sinks.shape != (n,):
        return f"sinks {tuple(sinks.shape)} must be [{n}]"
    return None


def supports(q: Tensor, k: Tensor, v: Tensor, k_cache: Tensor, v_cache: Tensor, sinks: Optional[Tensor] = None) -> bool:
    return unsupported_reason(q, k, v, k_cache, v_cache, sinks) is None


def launch(q, k, v, k_cache, v_cache, seq_lens, cu_seqlens, input_pos, cache_lens, page_table, slot_mapping,
           sinks=None, scale=None, sliding_window=None, logit_softcap=None, out=None) -> Tensor:
    why = unsupported_reason(q, k, v, k_cache, v_cache, sinks)
    if why:
        raise NotImplementedError(f"triton cached_attention: {why}")
    kv_cache_write.launch(k, v, k_cache, v_cache, slot_mapping, check=False)
    q = unit_stride(q)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    common = dict(scale=scale, sliding_window=sliding_window, logit_softcap=logit_softcap, sinks=sinks, out=out)
    if q.shape[0] == seq_lens.shape[0]:
        return decode(q, k_cache, v_cache, page_table, cache_lens, **common)
    return prefill(q, k_cache, v_cache, page_table, cu_seqlens, input_pos, cache_lens, **common)


@torch.library.custom_op("autodeploy::triton_cached_attention", mutates_args=("k_cache", "v_cache"))
def triton_cached_attention(
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
    sinks: Optional[Tensor] = None,
    scale: Optional[float] = None,
    sliding_window: Optional[int] = None,
    logit_softcap: Optional[float] = None,
) -> Tensor:
    """Writes k / v into the caches, then q [T, n, d] attends over each sequence's cache -> [T, n, d_v]."""
    return launch(q, k, v, k_cache, v_cache, seq_lens, cu_seqlens, input_pos, cache_lens, page_table,
                  slot_mapping, sinks, scale, sliding_window, logit_softcap)


@triton_cached_attention.register_fake
def _(q, k, v, k_cache, v_cache, seq_lens, cu_seqlens, input_pos, cache_lens, page_table, slot_mapping,
      sinks=None, scale=None, sliding_window=None, logit_softcap=None):
    return q.new_empty(q.shape[0], q.shape[1], v_cache.shape[-1])
