"""Decode-shaped linear: `autodeploy::triton_linear`, aten.linear with a GEMV kernel for few rows.

    triton_linear(x [.., K], weight [N, K], bias [N]?, max_rows=16) -> [.., N]    (= aten.linear)
        rows = x.numel() / K <= max_rows: the kernel below;  more rows (prefill): aten.linear (cuBLAS)

At decode (M = 1..16 rows) a linear is a matrix-vector product bound by the weight's bytes: every
weight element is used M times, the x rows are a few KB. The kernel reads each weight element
exactly once (16-byte vectors along K, cp.async-pipelined for the dot kinds) and accumulates in fp32:

    program (n-tile, k-split):  acc[BM, BN] = x[:, k-range] @ weight[n-tile, k-range]^T
        kind "dot_t":  tl.dot(w [BN, BK], x^T [BK, BM])^T         (weights on the MMA's M side: wgmma)
        kind "dot":    tl.dot(x [BM=16, BK], w^T [BK, BN])        (x rows padded to the MMA's 16)
        kind "fma":    sum_k x[:, None, k] * w[None, :, k]        (no padding; not pipelined, lost)

Measured on an H100 (benchmarks/triton_linear_sweep.py, CUDA-graph replays, weights rotated past
L2; the same times at M = 1 and 16): on the big matrices the kernel streams at 2.9-3.1 TB/s where
cuBLAS gets 2.6-2.8 (lm_head 1B 170 vs 189 us, 8B 340 vs 376 us; 8B o 14.9 vs 16.8 us); the
8-13 MB matrices of a 1B layer take ~7-8 us either way (a fixed ~4 us of launch and ramp-up on
top of the bytes), so there cuBLAS stays. On an H200 (launch_config) the kernel beats cuBLAS on
every 8B weight but qkv from HBM, with a K split where N tiles leave SMs idle: fp32 partials
[split, M, N], the n tile's last split to arrive (a ticket) summing them with the bias in the same
launch (store_or_merge). PUSH (launch(..., push=...)): the finished tiles also go to the tensor-
parallel peers' push buffers (push_all_reduce.push_tile; distributed/symm_all_reduce.py).

fp32 runs with exact fp32 products (no tf32), like aten.linear's default; the configs were timed in bf16.

NORM=True (launch(..., norm=...); add_rmsnorm_linear.py, and gated_linear.py's kernel through the
same helpers) gives the GEMV a residual add + RMSNorm prologue: each program first sums h = x +
residual over all of K for the rows' rstd (program (0, 0) also stores h), then normalizes every
x tile as it loads it. Untimed as yet: benchmarks/gated_linear_bench.py compares it with the norm
kernel + GEMV / cuBLAS.

Calls with more than `max_rows` rows go to aten.linear: select_backends puts this op in place of
an aten.linear only where the autotuner timed it faster at decode sizes, and the same graph node
also runs prefill, where cuBLAS's GEMM tiles win. Rows <= max_rows that the kernel cannot take
(device, dtype, K % 64) raise NotImplementedError, like the other Triton ops.
"""

from __future__ import annotations

import functools
from typing import Optional

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import Tensor

from autodeploy.backends.triton._common import (DTYPES, dot_precision, num_sms, pdl_enabled, pdl_launch,
                                                pdl_prefetch_meta, pdl_wait_and_release, prefetch_rows, rows_of,
                                                tickets, unsupported_device_or_dtype)
from autodeploy.backends.triton.push_all_reduce import push_tile

MAX_ROWS = 16  # decode batches; the dot kinds pad x to the MMA's 16 rows
K_MULTIPLE = 64  # every BK tile lies inside K: no K masks in the loop
KINDS = {"fma": 0, "dot": 1, "dot_t": 2}


# ---- the GEMV machinery, shared with gated_linear.py (gate and up tiles in one program) -------------

@triton.jit
def gemv_acc_init(BM: tl.constexpr, BN: tl.constexpr, KIND: tl.constexpr):
    """fp32 zeros in the kind's orientation: [BN, BM] for "dot_t" (weights on the MMA's M side), else [BM, BN]."""
    # one return: triton 3.6 rejects returns of different shapes even under a constexpr branch
    if KIND == 2:
        acc = tl.zeros((BN, BM), dtype=tl.float32)
    else:
        acc = tl.zeros((BM, BN), dtype=tl.float32)
    return acc


@triton.jit
def gemv_step(acc, w, xk, KIND: tl.constexpr, PRECISION: tl.constexpr):
    """acc += xk [BM, BK] @ w [BN, BK]^T for one BK step, in the orientation of gemv_acc_init."""
    if KIND == 0:
        acc += tl.sum(xk.to(tl.float32)[:, None, :] * w.to(tl.float32)[None, :, :], axis=2)
    elif KIND == 1:
        acc += tl.dot(xk, tl.trans(w), input_precision=PRECISION)
    else:
        acc += tl.dot(w, tl.trans(xk), input_precision=PRECISION)
    return acc


@triton.jit
def gemv_acc_rows(acc, KIND: tl.constexpr):
    """The accumulator as [BM, BN] (x rows first), whatever the kind."""
    if KIND == 2:  # one return (see gemv_acc_init)
        acc = tl.trans(acc)
    return acc


# ---- the add + RMSNorm prologue (NORM=True): x rows replaced by rmsnorm(x + residual) -------------
# At decode the rows are a few KB (K = 2048 bf16: 4 KB each), so every program can afford to read them
# whole from L2 for the statistics; this removes the norm kernel (~1.8 us + a launch gap) before the GEMV.

@triton.jit
def summed_rows(x_ptrs, res_ptrs, mask):
    """(x + residual) in fp32, rounded once to x's dtype as the unfused residual add rounds."""
    x = tl.load(x_ptrs, mask=mask, other=0.0)
    r = tl.load(res_ptrs, mask=mask, other=0.0)
    return (x.to(tl.float32) + r.to(tl.float32)).to(x.dtype).to(tl.float32)


@triton.jit
def norm_prologue(x_ptr, res_ptr, res_out_ptr, rm, M, K, stride_xm, eps, program, BM: tl.constexpr, BK: tl.constexpr):
    """rstd [BM] of the rows h = x + residual over all of K; the program with `program == 0` stores h
    (contiguous [M, K]) to res_out_ptr. x and residual share the row stride."""
    rk = tl.arange(0, BK)
    mask_m = rm < M
    ss = tl.zeros((BM,), dtype=tl.float32)
    # [BM]: rows < M in program 0, none elsewhere (int math: one mask dtype whatever `program` is)
    writes = rm < M - M * tl.minimum(program, 1)
    for k0 in range(0, K, BK):
        offs = rm[:, None] * stride_xm + (k0 + rk)[None, :]  # [BM, BK]
        h = summed_rows(x_ptr + offs, res_ptr + offs, mask_m[:, None])
        tl.store(res_out_ptr + rm[:, None] * K + (k0 + rk)[None, :], h.to(res_out_ptr.dtype.element_ty),
                 mask=writes[:, None] & (rk < BK)[None, :])
        ss += tl.sum(h * h, axis=1)
    return 1.0 / tl.sqrt(ss / K + eps)


@triton.jit
def normed_tile(x_ptr, res_ptr, norm_w_ptr, x_offs, k0, rk, mask_m, rstd, UNIT_OFFSET: tl.constexpr):
    """rmsnorm(x + residual) of one [BM, BK] tile in fp32 (the caller rounds it to the weight's dtype,
    as the unfused norm's output is rounded)."""
    nw = tl.load(norm_w_ptr + k0 + rk).to(tl.float32)  # [BK]
    if UNIT_OFFSET:  # Gemma stores w - 1
        nw = nw + 1.0
    h = summed_rows(x_ptr + x_offs, res_ptr + x_offs, mask_m[:, None])
    return h * rstd[:, None] * nw[None, :]


@triton.jit
def store_or_merge(out, out_ptr, part_ptr, ticket_ptr, bias_ptr, rm, rn, mask_m, mask_n, stride_om, stride_split,
                   pid_n, pid_k, PARTIAL: tl.constexpr, HAS_BIAS: tl.constexpr,
                   peers_ptr, counter_ptr, PUSH: tl.constexpr, RANK: tl.constexpr, W: tl.constexpr,
                   MAX_ROWS: tl.constexpr, ROW_BYTES: tl.constexpr, BITS: tl.constexpr):
    """Store a program's fp32 out [BM, BN] (+ bias) in out's dtype; with PARTIAL (a split K) store it as the
    split's partial [split, M, N], and the n tile's last split to arrive (a ticket) sums the partials in
    split order (+ bias) into out: the splits merge inside the launch, no second kernel.
    PUSH: the finished tile also goes to the peers' push buffers (push_all_reduce.push_tile; the rest of
    the arguments are its)."""
    mask_o = mask_m[:, None] & mask_n[None, :]
    o_offs = rm[:, None] * stride_om + rn[None, :]  # [BM, BN]
    if PARTIAL:
        tl.store(part_ptr + pid_k * stride_split + o_offs, out, mask=mask_o)
        tl.debug_barrier()  # every thread's partial stores precede the ticket's release
        ticket = tl.atomic_add(ticket_ptr + pid_n, 1, sem="acq_rel", scope="gpu")
        if ticket == tl.num_programs(1) - 1:
            tl.debug_barrier()
            total = tl.zeros(out.shape, dtype=tl.float32)
            for s in range(0, tl.num_programs(1)):  # in split order: every launch sums the same way
                total += tl.load(part_ptr + s * stride_split + o_offs, mask=mask_o, other=0.0, cache_modifier=".cg")
            if HAS_BIAS:
                total += tl.load(bias_ptr + rn, mask=mask_n, other=0.0).to(tl.float32)[None, :]
            tile = total.to(out_ptr.dtype.element_ty)
            tl.store(out_ptr + o_offs, tile, mask=mask_o)
            tl.store(ticket_ptr + pid_n, 0)  # every split has arrived: reset for the next launch
            if PUSH:
                push_tile(tile, rm, rn, mask_o, peers_ptr, counter_ptr, RANK, W, MAX_ROWS, ROW_BYTES, BITS)
    else:
        if HAS_BIAS:
            out += tl.load(bias_ptr + rn, mask=mask_n, other=0.0).to(tl.float32)[None, :]
        tile = out.to(out_ptr.dtype.element_ty)
        tl.store(out_ptr + o_offs, tile, mask=mask_o)
        if PUSH:
            push_tile(tile, rm, rn, mask_o, peers_ptr, counter_ptr, RANK, W, MAX_ROWS, ROW_BYTES, BITS)


@triton.jit(do_not_specialize=["M"])  # M = 1 would otherwise compile its own copy of every config
def _linear_kernel(
    x_ptr, w_ptr, bias_ptr, out_ptr, part_ptr, ticket_ptr,  # PARTIAL only: part_ptr, ticket_ptr
    peers_ptr, counter_ptr,  # PUSH only: push_all_reduce.py's peer buffers and slot counters
    res_ptr, norm_w_ptr, res_out_ptr, eps,  # NORM only: residual [M, K], norm weight [K], new residual [M, K]
    M, N, K, K_PER_SPLIT,
    stride_xm, stride_wn, stride_om, stride_split,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, KIND: tl.constexpr,
    PARTIAL: tl.constexpr, HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr,
    NORM: tl.constexpr, UNIT_OFFSET: tl.constexpr, PDL: tl.constexpr = False,
    PF_LINES: tl.constexpr = 0, PF_STEP: tl.constexpr = 64,
    PUSH: tl.constexpr = False, RANK: tl.constexpr = 0, W: tl.constexpr = 1, MAX_ROWS: tl.constexpr = 1,
    ROW_BYTES: tl.constexpr = 16, BITS: tl.constexpr = 16,
):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    rm = tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    mask_m = rm < M
    mask_n = rn < N
    k_start = pid_k * K_PER_SPLIT
    if PF_LINES > 0:  # weights only, before the wait (_common.py: weight prefetch)
        prefetch_rows(w_ptr + tl.minimum(rn, N - 1).to(tl.int64) * stride_wn + k_start, PF_LINES, PF_STEP)
    pdl_wait_and_release(PDL)
    k_end = tl.minimum(k_start + K_PER_SPLIT, K)
    if NORM:  # every program takes the rows' statistics over all of K; program (0, 0) writes x + residual
        rstd = norm_prologue(x_ptr, res_ptr, res_out_ptr, rm, M, K, stride_xm, eps, pid_n + pid_k, BM, BK)
    w_ptrs = w_ptr + rn.to(tl.int64)[:, None] * stride_wn + (k_start + rk)[None, :]  # [BN, BK]
    x_offs = rm[:, None] * stride_xm + (k_start + rk)[None, :]  # [BM, BK]
    acc = gemv_acc_init(BM, BN, KIND)
    for k0 in range(k_start, k_end, BK):
        w = tl.load(w_ptrs, mask=mask_n[:, None], other=0.0)  # [BN, BK]: the bytes that matter
        if NORM:
            xk = normed_tile(x_ptr, res_ptr, norm_w_ptr, x_offs, k0, rk, mask_m, rstd, UNIT_OFFSET).to(w.dtype)
        else:
            xk = tl.load(x_ptr + x_offs, mask=mask_m[:, None], other=0.0)  # [BM, BK]: a few KB, cached
        acc = gemv_step(acc, w, xk, KIND, PRECISION)
        w_ptrs += BK
        x_offs += BK
    acc = gemv_acc_rows(acc, KIND)  # [BM, BN]
    store_or_merge(acc, out_ptr, part_ptr, ticket_ptr, bias_ptr, rm, rn, mask_m, mask_n, stride_om, stride_split,
                   pid_n, pid_k, PARTIAL, HAS_BIAS, peers_ptr, counter_ptr, PUSH, RANK, W, MAX_ROWS, ROW_BYTES, BITS)


@triton.jit
def _sum_splits_kernel(part_ptr, bias_ptr, out_ptr, MN, N, SPLIT, BLOCK: tl.constexpr, HAS_BIAS: tl.constexpr,
                       PDL: tl.constexpr = False):
    pdl_wait_and_release(PDL)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)  # flat index into out [M, N]
    mask = offs < MN
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for s in range(SPLIT):
        acc += tl.load(part_ptr + s * MN + offs, mask=mask, other=0.0)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs % N, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


def sum_splits(partials: Tensor, bias: Optional[Tensor], out: Tensor) -> None:
    """out [M, N] = sum over S of partials [S, M, N] (fp32, from a split-K GEMV) + bias, in out's dtype."""
    split, m, n = partials.shape
    block = 1024
    _sum_splits_kernel[(triton.cdiv(m * n, block),)](
        partials, bias if bias is not None else partials, out, m * n, n, split,
        BLOCK=block, HAS_BIAS=bias is not None, num_warps=4, PDL=pdl_enabled(out.device), **pdl_launch(out.device),
    )


def operand_problem(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Optional[str]:
    """Why the GEMV kernels cannot read these operands (device, dtype, layout, K), whatever the rows; None if they can."""
    why = unsupported_device_or_dtype(x, weight, bias)
    if why:
        return why
    if not x.is_floating_point():
        return f"dtype {x.dtype} is not one of {DTYPES}"
    if weight.dtype != x.dtype or (bias is not None and bias.dtype != x.dtype):
        return "x, weight and bias must share one dtype"
    if weight.device != x.device or (bias is not None and bias.device != x.device):
        return "x, weight and bias must be on one device"
    if weight.dim() != 2 or weight.stride(-1) != 1:
        return "weight must be a [N, K] matrix with contiguous rows"
    n, k = weight.shape
    if x.dim() == 0 or x.shape[-1] != k:
        return f"x has {x.shape[-1] if x.dim() else 0} input channels, the weight {k}"
    if k == 0 or k % K_MULTIPLE:
        return f"K = {k} is not a positive multiple of {K_MULTIPLE}"
    if bias is not None and bias.shape != (n,):
        return f"bias must be [{n}], got {list(bias.shape)}"
    return None


def unsupported_reason(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Optional[str]:
    why = operand_problem(x, weight, bias)
    if why:
        return why
    k = weight.shape[-1]
    if x.numel() // k > MAX_ROWS:
        return f"{x.numel() // k} rows: the GEMV kernel takes at most {MAX_ROWS} (decode); cuBLAS takes more"
    return None


def supports(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> bool:
    return unsupported_reason(x, weight, bias) is None


def _largest_bk(k: int, bk: int) -> int:
    """The largest power of two <= bk dividing k (k % 64 == 0, so at least 64)."""
    while k % bk:
        bk //= 2
    return bk


def split_k(k: int, bk: int, split: int) -> tuple[int, int, int]:
    """(bk, split, k_per_split) valid for K: BK the largest power of two <= bk dividing K, each split
    a whole number of BK steps (the GEMV kernels' loops have no K masks). Shared by fp8_gemv.py."""
    bk = _largest_bk(k, bk)
    split = max(1, min(split, k // bk))
    k_per_split = triton.cdiv(triton.cdiv(k, split), bk) * bk
    return bk, triton.cdiv(k, k_per_split), k_per_split


def normalized(config: dict, m: int, n: int, k: int) -> dict:
    """A config made valid for (m, n, k): BK dividing K, the split a whole number of BK steps."""
    bk, split, k_per_split = split_k(k, config["bk"], config.get("split", 1))
    kind = config.get("kind", "dot")
    bm = max(1, triton.next_power_of_2(m)) if kind == "fma" else 16
    return dict(config, kind=kind, bk=bk, split=split, k_per_split=k_per_split, bm=bm)


def streaming_tiles(n: int, k: int, sms: int, itemsize: int = 2) -> tuple[int, int, int]:
    """(BN, BK, stages) of an unsplit GEMV, from benchmarks/triton_linear_sweep.py on an H100 (132 SMs,
    bf16, M = 1 and 16; "dot_t" won every weight there; gated_linear.py keeps these tiles):
      long rows (K >= 3N: down)   BN 16, BK 256, 4 stages
      wide (N / 64 >= 2/3 SMs)    BN 64, BK 256, 3 stages   qkv 8B, gate_up, lm_head: 0.90-0.98 x cuBLAS
      otherwise (N <= 4096)       BN 32, BK 128, 5 stages   8B o 0.89 x; 1B qkv / o 1.02 x
    fp32 halves BK so a stage holds the same bytes (untimed)."""
    if k >= 3 * n:
        bn, bk, stages = 16, 256, 4
    elif triton.cdiv(n, 64) * 3 >= 2 * sms:
        bn, bk, stages = 64, 256, 3
    else:
        bn, bk, stages = 32, 128, 5
    return bn, max(K_MULTIPLE, bk * 2 // itemsize), stages


@functools.lru_cache(maxsize=1024)  # per call at decode: keep the host's share of a ~5 us GEMV small
def launch_config(m: int, n: int, k: int, sms: int, itemsize: int = 2) -> dict:
    """Tile sizes and the K split for one call; not to be mutated.

    From benchmarks/triton_linear_sweep.py on an H200 (132 SMs, M = 1, bf16, CUDA-graph replays;
    benchmarks/results/2026-11-28-session7/c2_linear_sweep.json): 64-row tiles, 512-byte K steps, 4
    stages were within ~5% of the best config on every 8B weight and TP=2 shard. A K split (merged in
    the launch: the n tile's last split sums, tickets) paid only as 2 splits where 64-row tiles fill at
    most half the SMs and each half-row is >= 4 KB: 8B o 10.8 us vs 11.1 unsplit (cuBLAS 13.7), down
    29.8 vs 31.3 (cuBLAS 32.4), TP=2 down 16.5 vs 17.1 (cuBLAS 20.5); 3+ splits lost everywhere, and
    short rows (TP=2 o, K = 2048) lost with 2 (6.7 vs 6.5); the TP=2 qkv shard (48 tiles) takes 2 for
    10.4 us where unsplit was 10.1 (cuBLAS 11.9), within the rule's noise. Unsplit: lm_head 238.9 us
    (cuBLAS 247.7), TP=2 o 6.5 (7.6), 8B qkv 16.1 (15.7). (The H100 rule before it,
    streaming_tiles, left the H200's SMs short of loads: 8B o 17.0 us, down 62.9.)
    fp32 halves BK so a stage holds the same bytes.
    """
    bn, bk, stages = 64, max(K_MULTIPLE, 256 * 2 // itemsize), 4
    split = 2 if 2 * triton.cdiv(n, bn) <= sms and k * itemsize >= 8192 else 1
    return normalized(dict(kind="dot_t", bn=bn, bk=bk, split=split, num_warps=4, num_stages=stages), m, n, k)


def norm_problem(x: Tensor, norm: tuple) -> Optional[str]:
    """Why the add + RMSNorm prologue cannot take norm = (residual, norm_weight, eps, add_unit_offset); None if it can."""
    residual, norm_weight = norm[0], norm[1]
    if residual.shape != x.shape or residual.dtype != x.dtype or residual.device != x.device:
        return "residual must have x's shape, dtype and device"
    if norm_weight.shape != (x.shape[-1],) or norm_weight.device != x.device or norm_weight.stride(-1) != 1:
        return f"norm weight must be a contiguous [{x.shape[-1]}] on x's device"
    if norm_weight.is_floating_point() and norm_weight.dtype not in DTYPES:
        return f"norm weight dtype {norm_weight.dtype} is not one of {DTYPES}"
    return None


def gemv_rows(x: Tensor, norm: Optional[tuple]):
    """(x [M, K], norm kernel arguments (residual [M, K], norm weight, new residual [M, K], eps)) for a launch.

    Without a norm the three pointers are x (never read: NORM=False). With one, x and residual are
    read with one row stride, so both are made contiguous; the new residual is allocated here."""
    if norm is None:
        x2 = rows_of(x)  # [M, K]
        return x2, (x2, x2, x2, 0.0)
    x2, res2 = rows_of(x).contiguous(), rows_of(norm[0]).contiguous()  # [M, K] each
    new_res = torch.empty_like(x2)  # [M, K]
    return x2, (res2, norm[1], new_res, float(norm[2]))


def shaped(out: Tensor, norm_args: tuple, x: Tensor, norm: Optional[tuple]):
    """out [M, N] as [.., N]; with a norm, (that, new residual shaped like x)."""
    out = out.reshape(*x.shape[:-1], out.shape[-1])
    return out if norm is None else (out, norm_args[2].reshape(x.shape))


def launch(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, config: Optional[dict] = None,
           norm: Optional[tuple] = None, push: Optional[tuple] = None):
    """x [.., K] @ weight [N, K]^T (+ bias) -> [.., N] on the kernel; raises NotImplementedError when it cannot.

    norm = (residual [.., K], norm_weight [K], eps, add_unit_offset): x is first replaced by
    rmsnorm(x + residual) (the prologue); returns (out [.., N], x + residual [.., K]) then.
    push = (peers, counters, rank, world, max_rows, row_bytes) of push_all_reduce.launch: each finished
    output tile is also pushed to the peers (the caller has checked that the rows fit the push slots and
    runs push_all_reduce.launch(out, ..., pushed=True) next)."""
    why = unsupported_reason(x, weight, bias) or (norm_problem(x, norm) if norm is not None else None)
    if why:
        raise NotImplementedError(f"triton linear: {why}")
    n, k = weight.shape
    x2, norm_args = gemv_rows(x, norm)
    m = x2.shape[0]
    out = torch.empty(m, n, dtype=x.dtype, device=x.device)  # [M, N]
    if m == 0 or n == 0:
        if norm is not None:
            norm_args[2].copy_(x2 + norm_args[0])
        return shaped(out, norm_args, x, norm)
    cfg = normalized(config, m, n, k) if config else launch_config(m, n, k, num_sms(x.device), x.element_size())
    split = cfg["split"]
    tiles = triton.cdiv(n, cfg["bn"])
    if split > 1:  # merged in the launch by each n tile's last split (tickets): no second kernel
        part = torch.empty(split, m, n, dtype=torch.float32, device=x.device)  # [S, M, N]
        counters = tickets(x.device, tiles)
    else:
        part = counters = out  # unused
    peers, slots, rank, world, max_rows, row_bytes = push if push is not None else (out, out, 0, 1, 1, 16)
    _linear_kernel[(tiles, split)](
        x2, weight, bias if bias is not None else weight, out, part, counters, peers, slots, *norm_args,
        m, n, k, cfg["k_per_split"],
        x2.stride(0), weight.stride(0), n, m * n,
        BM=cfg["bm"], BN=cfg["bn"], BK=cfg["bk"], KIND=KINDS[cfg["kind"]], PARTIAL=split > 1,
        HAS_BIAS=bias is not None, PRECISION=dot_precision(x.dtype),
        NORM=norm is not None, UNIT_OFFSET=bool(norm[3]) if norm is not None else False,
        PDL=pdl_enabled(x.device), num_warps=cfg["num_warps"], num_stages=cfg["num_stages"], **pdl_launch(x.device),
        **pdl_prefetch_meta(x.device, cfg["bk"], weight.element_size()),
        PUSH=push is not None, RANK=rank, W=world, MAX_ROWS=max_rows, ROW_BYTES=row_bytes, BITS=8 * x.element_size(),
    )
    return shaped(out, norm_args, x, norm)


@torch.library.custom_op("autodeploy::triton_linear", mutates_args=())
def triton_linear(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, max_rows: int = MAX_ROWS) -> Tensor:
    """aten.linear(x [.., K], weight [N, K], bias) -> [.., N]: the GEMV kernel up to `max_rows` rows, cuBLAS above."""
    k = weight.shape[-1]
    if x.numel() // max(1, k) > max_rows:
        return F.linear(x, weight, bias)
    return launch(x, weight, bias)


@triton_linear.register_fake
def _(x, weight, bias=None, max_rows=MAX_ROWS):
    return x.new_empty(*x.shape[:-1], weight.shape[0])
