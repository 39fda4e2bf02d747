"""The end of a K-major INT4 GEMV program (int4_kmajor_gemv.py, int4_kmajor_gemv_bf16x2.py): store a row's
[BN] result, or with a K split its fp32 partial, and the merge the last split of an n tile runs."""

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
