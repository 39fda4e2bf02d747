"""Row-wise argmax in one launch: the sampler's greedy pick (runtime/sampler.argmax_rows) on the GPU.

    scores [n, V] float32 (unit stride on V) -> [n] int64, the first index of each row's maximum, as
    torch.argmax(-1): a NaN is the maximum (the first NaN's index wins), an all -inf row gives 0.

torch's chunked argmax (sampler.argmax_rows: max over chunks, argmax over the chunk maxima, then an index
multiply, a gather and an add) is five launches between two decode steps, ~15 us of kernels plus the gaps
between them for one 128256-wide row on an H200 (an engine-step trace, eighth session). Here grid
(n, CHUNKS): each program reduces one chunk of a row to (max, its first index, the first NaN's index),
stores them, and takes a ticket (one counter per row, as paged_attention_decode_rope.py's split merge);
the row's last program reads its CHUNKS results back (.cg: from L2) and writes the token, then sets the
counter back to 0 for the next launch. Chunk order decides ties: the smallest index among the chunks
holding the maximum is the first occurrence.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from autodeploy.backends.triton._common import tickets

BLOCK = 2048  # values a program reduces: 16 a thread at 4 warps; 8B's vocab is 63 chunks
MAX_CHUNKS = 128  # the last program's gather of chunk results: one load of BLOCK_C values
NO_INDEX = 2**31 - 1


@triton.jit
def _argmax_kernel(x_ptr, out_ptr, part_max_ptr, part_idx_ptr, part_nan_ptr, ticket_ptr, V, stride_x,
                   CHUNKS: tl.constexpr, BLOCK: tl.constexpr, BLOCK_C: tl.constexpr, NO_INDEX: tl.constexpr):
    row = tl.program_id(0)
    chunk = tl.program_id(1)
    cols = chunk * BLOCK + tl.arange(0, BLOCK)
    ok = cols < V
    v = tl.load(x_ptr + row.to(tl.int64) * stride_x + cols, mask=ok, other=float("-inf"))
    nan = (v != v) & ok
    m = tl.max(tl.where(nan, float("-inf"), v), axis=0)
    first_max = tl.min(tl.where(ok & (v == m), cols, NO_INDEX), axis=0)
    first_nan = tl.min(tl.where(nan, cols, NO_INDEX), axis=0)
    slot = row * CHUNKS + chunk
    tl.store(part_max_ptr + slot, m)
    tl.store(part_idx_ptr + slot, first_max)
    tl.store(part_nan_ptr + slot, first_nan)
    tl.debug_barrier()  # the stores precede the ticket's release
    ticket = tl.atomic_add(ticket_ptr + row, 1, sem="acq_rel", scope="gpu")
    if ticket == CHUNKS - 1:  # the row's last chunk: every result is in L2
        c = tl.arange(0, BLOCK_C)
        c_ok = c < CHUNKS
        ms = tl.load(part_max_ptr + row * CHUNKS + c, mask=c_ok, other=float("-inf"), cache_modifier=".cg")
        idx = tl.load(part_idx_ptr + row * CHUNKS + c, mask=c_ok, other=NO_INDEX, cache_modifier=".cg")
        nans = tl.load(part_nan_ptr + row * CHUNKS + c, mask=c_ok, other=NO_INDEX, cache_modifier=".cg")
        best = tl.max(ms, axis=0)
        pick = tl.min(tl.where(c_ok & (ms == best), idx, NO_INDEX), axis=0)
        first_nan_row = tl.min(nans, axis=0)
        pick = tl.where(first_nan_row < NO_INDEX, first_nan_row, pick)
        tl.store(out_ptr + row, pick.to(tl.int64))
        tl.store(ticket_ptr + row, 0)


def supports(scores: Tensor) -> bool:
    """A float32 [n, V] matrix on CUDA with unit stride on V and a vocab this launch shape covers."""
    return (scores.is_cuda and scores.dim() == 2 and scores.dtype == torch.float32 and scores.stride(-1) == 1
            and 0 < scores.shape[1] <= BLOCK * MAX_CHUNKS and scores.shape[0] > 0)


def launch(scores: Tensor) -> Tensor:
    """scores [n, V] float32 -> [n] int64 (module docstring); the caller checked supports() (or the
    interpreter runs it on CPU tensors)."""
    n, v = scores.shape
    chunks = triton.cdiv(v, BLOCK)
    out = torch.empty(n, dtype=torch.int64, device=scores.device)
    part_max = torch.empty(n, chunks, dtype=torch.float32, device=scores.device)
    part_idx = torch.empty(n, chunks, dtype=torch.int32, device=scores.device)
    part_nan = torch.empty(n, chunks, dtype=torch.int32, device=scores.device)
    _argmax_kernel[(n, chunks)](scores, out, part_max, part_idx, part_nan, tickets(scores.device, n), v,
                                scores.stride(0), CHUNKS=chunks, BLOCK=BLOCK,
                                BLOCK_C=triton.next_power_of_2(chunks), NO_INDEX=NO_INDEX, num_warps=4)
    return out
