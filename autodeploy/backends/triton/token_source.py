"""The overlapped engine's placeholder tokens substituted in one launch (runtime/compile/model.py's decode
CUDA graph, _graph_step, calls it on CUDA).

    ids [T] int64 (in place), prev_tokens [n] int64, source [T] int64:
        ids[t] = prev_tokens[source[t]] where source[t] >= 0, unchanged elsewhere

torch spells this clamp, index_select, a comparison, where and a copy: five kernels at the head of every
decode replay, ~11 us of an 8B FP8 step on an H200 (engine-step trace, eighth session), for a few
integers. Here one program of BLOCK lanes a chunk of tokens: load the source, gather where it is >= 0,
store. Each position is read and written by its own lane only, so in place is safe.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

BLOCK = 256


@triton.jit
def _token_source_kernel(ids_ptr, prev_ptr, source_ptr, T, BLOCK: tl.constexpr):
    t = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = t < T
    src = tl.load(source_ptr + t, mask=ok, other=-1)
    take = ok & (src >= 0)
    tok = tl.load(prev_ptr + tl.where(take, src, 0), mask=take)
    tl.store(ids_ptr + t, tok, mask=take)


def supports(ids: Tensor, prev_tokens: Tensor, source: Tensor) -> bool:
    """One-dimensional int64 tensors on one CUDA device, ids and source of one length, unit stride."""
    ts = (ids, prev_tokens, source)
    return (all(t.is_cuda and t.dim() == 1 and t.dtype == torch.int64 and t.stride(0) == 1 for t in ts)
            and len({t.device for t in ts}) == 1 and ids.shape == source.shape)


def substitute_(ids: Tensor, prev_tokens: Tensor, source: Tensor) -> Tensor:
    """ids with every position whose source >= 0 replaced by prev_tokens[source] (in place; returns ids).
    The caller checked supports() (or the interpreter runs it on CPU tensors). A source past prev_tokens is
    the caller's error, as index_select's (there: a device-side assert)."""
    t = ids.numel()
    if t:
        _token_source_kernel[(triton.cdiv(t, BLOCK),)](ids, prev_tokens, source, t, BLOCK=BLOCK, num_warps=4)
    return ids
