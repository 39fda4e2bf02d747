"""The end of a K-major INT4 GEMV program (int4_kmajor_gemv.py, int4_kmajor_gemv_bf16x2.py): a group's scale
applied to its rows, each row's [BN] result stored, or with a K split its fp32 partial, and the merge the last
split of an n tile runs."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _finish_row(acc, row, out_ptr, part_ptr, bias_ptr, rn, mask_n, M, N, stride_om, pid_k,
                SPLIT: tl.constexpr, HAS_BIAS: tl.constexpr):
    """One split: bias and store row `row` [BN]. Several: store it as partial [pid_k, row, cols]."""
    if SPLIT == 1:
        if HAS_BIAS:
            acc += tl.load(bias_ptr + rn, mask=mask_n, other=0.0).to(tl.float32)
        tl.store(out_ptr + row * stride_om + rn, acc.to(out_ptr.dtype.element_ty), mask=mask_n)
    else:
        tl.store(part_ptr + (pid_k * M + row) * N + rn, acc, mask=mask_n)


@triton.jit
def _merge_row(row, out_ptr, part_ptr, bias_ptr, rn, mask_n, M, N, stride_om,
               BN: tl.constexpr, SPLIT: tl.constexpr, HAS_BIAS: tl.constexpr):
    """The last program of an n tile: out[row, cols] = sum of the SPLIT partials (+ bias). .cg: from L2,
    never a stale L1 line of another SM's partial."""
    total = tl.zeros((BN,), dtype=tl.float32)
    for s in range(SPLIT):
        total += tl.load(part_ptr + (s * M + row) * N + rn, mask=mask_n, other=0.0, cache_modifier=".cg")
    if HAS_BIAS:
        total += tl.load(bias_ptr + rn, mask=mask_n, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * stride_om + rn, total.to(out_ptr.dtype.element_ty), mask=mask_n)


@triton.jit
def _group_scales(s_ptr, z_ptr, g, stride_sg, stride_zg, rn, mask_n, EVICT: tl.constexpr):
    """Group g's scales and zeros of the columns rn: [BN] each, as stored (EVICT: the loads' eviction policy)."""
    s = tl.load(s_ptr + g * stride_sg + rn, mask=mask_n, other=0.0, eviction_policy=EVICT)
    z = tl.load(z_ptr + g * stride_zg + rn, mask=mask_n, other=0.0, eviction_policy=EVICT)
    return s, z


@triton.jit
def _add_group(acc0, acc1, acc2, acc3, d0, d1, d2, d3, s, ROWS: tl.constexpr):
    """The end of a group: each row's accumulator [BN] plus s [BN] times its d tile summed over the words."""
    acc0 += s * tl.sum(d0, axis=0)
    if ROWS > 1:
        acc1 += s * tl.sum(d1, axis=0)
    if ROWS > 2:
        acc2 += s * tl.sum(d2, axis=0)
    if ROWS > 3:
        acc3 += s * tl.sum(d3, axis=0)
    return acc0, acc1, acc2, acc3


@triton.jit
def _finish(acc0, acc1, acc2, acc3, out_ptr, part_ptr, bias_ptr, ticket_ptr, rn, mask_n, M, N, stride_om, pid_n, pid_k,
            ROWS: tl.constexpr, BN: tl.constexpr, SPLIT: tl.constexpr, HAS_BIAS: tl.constexpr):
    """A program's end: its rows stored (or their partials), then with a K split the ticket; the last split
    of the n tile to arrive merges the partials (as paged_attention_decode_rope.py's tickets)."""
    _finish_row(acc0, 0, out_ptr, part_ptr, bias_ptr, rn, mask_n, M, N, stride_om, pid_k, SPLIT, HAS_BIAS)
    if ROWS > 1:
        _finish_row(acc1, 1, out_ptr, part_ptr, bias_ptr, rn, mask_n, M, N, stride_om, pid_k, SPLIT, HAS_BIAS)
    if ROWS > 2:
        _finish_row(acc2, 2, out_ptr, part_ptr, bias_ptr, rn, mask_n, M, N, stride_om, pid_k, SPLIT, HAS_BIAS)
    if ROWS > 3:
        _finish_row(acc3, 3, out_ptr, part_ptr, bias_ptr, rn, mask_n, M, N, stride_om, pid_k, SPLIT, HAS_BIAS)
    if SPLIT > 1:
        tl.debug_barrier()  # every thread's partial stores precede the ticket's release
        ticket = tl.atomic_add(ticket_ptr + pid_n, 1, sem="acq_rel", scope="gpu")
        if ticket == SPLIT - 1:  # the last split of this n tile to finish merges
            tl.debug_barrier()
            for row in tl.static_range(ROWS):
                _merge_row(row, out_ptr, part_ptr, bias_ptr, rn, mask_n, M, N, stride_om, BN, SPLIT, HAS_BIAS)
            tl.store(ticket_ptr + pid_n, 0)  # every split has arrived: reset for the next launch
