"""Push all-reduce over peer memory, optionally fused with the residual add + RMSNorm after it: a small
tensor-parallel all-reduce in one kernel and one one-way NVLink trip.

    x [M, N], this rank's partial sums (every rank the same shape):
        plain:  out = sum over the ranks of x                                                [M, N]
        gather: out = every rank's x side by side on the last dim                            [M, W * N]
                (launch_gather: the flat shard in slot-sized chunks, a program per chunk)
        fused:  s = that sum, rounded to x's dtype (what the all-reduce returns)
                new_residual = s + residual, normed = rmsnorm(new_residual, weight)          [M, N] each
                (the all-reduce followed by autodeploy::triton_fused_add_rmsnorm, one launch)

Every rank owns one buffer that all ranks can address (torch symmetric memory, set up by
distributed/symm_all_reduce.py), filled with all-one bytes ("empty") before the first call:

    rows   x's dtype [2 (parity), W (src), MAX_ROWS, ROW_BYTES / element size]

Program m takes row (slot) m:
    epoch  = counter[m] + 1     (counter: this rank's own memory; every rank runs the same calls in the same
                                 order, so the counters agree without talking), parity = epoch & 1
    push:  x[m] -> rows[parity, RANK, m] in every peer's buffer (stores over NVLink); a value whose bits are
           all ones (a NaN) is sent as another NaN, so no value sent reads as empty
    wait:  each value of rows[parity, src, m] in this rank's buffer, for every peer src, is read (volatile)
           until it is no longer empty: the data is its own flag, so there is no flag, no fence and no
           second NVLink trip; then those values are set empty again for epoch e + 2
    sum:   fp32, over src in rank order: its own x from registers, the peers' values as read.
           Every rank adds the same values in the same order, so the replicated activations stay
           bit-identical across ranks.
    counter[m] = epoch

Why two parities suffice and nothing overwrites a value still unread: a peer writes parity p of slot m
again at epoch e + 2 only after it has read this rank's push of e + 1, which this rank made in a later
kernel than the one that read and emptied epoch e (each kernel waits for the one before it, PDL
included). A peer one epoch ahead writes the other parity. torch's one-shot kernel (copy into its own
buffer, a barrier, loads from every peer, a second barrier) spends ~3 NVLink trips where this spends one,
and the add + RMSNorm after it was a launch of its own. (The first version raised a release flag
after the data, system scope: a fence and a second trip per call; 5.6 us a call at TP=2 on H200s.)

A wait has no time-out: like a NCCL collective, a call waits until every peer has made the same call.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from autodeploy.backends.triton._common import pdl_enabled, pdl_launch, pdl_wait_and_release
from autodeploy.backends.triton.rmsnorm import norm_weight, num_warps, rmsnorm_values

DTYPES = (torch.bfloat16, torch.float16, torch.float32)


@triton.jit
def _row_ptr(base, parity, src, row, ELEM, W: tl.constexpr, MAX_ROWS: tl.constexpr, ROW_BYTES: tl.constexpr):
    """rows[parity, src, row] of the buffer at int64 address `base`, as a pointer to ELEM."""
    offset = ((parity * W + src) * MAX_ROWS + row).to(tl.int64) * ROW_BYTES
    # 16-byte aligned (symmetric-memory buffers are; ROW_BYTES is a multiple of 16): said so, the row's loads
    # and stores become 16-byte vectors instead of one NVLink transaction per value
    return tl.multiple_of((base + offset).to(tl.pointer_type(ELEM)), 16)


@triton.jit
def _bits(v, BITS: tl.constexpr):
    """v's bit patterns as signed ints of its width (BITS 16 or 32)."""
    if BITS == 16:  # one return (triton 3.6 rejects returns of different types even under a constexpr branch)
        b = v.to(tl.int16, bitcast=True)
    else:
        b = v.to(tl.int32, bitcast=True)
    return b


@triton.jit
def _empty(v, BITS: tl.constexpr):
    """All-one bit patterns shaped and typed like v: an empty value."""
    if BITS == 16:
        e = tl.full(v.shape, -1, tl.int16).to(v.dtype, bitcast=True)
    else:
        e = tl.full(v.shape, -1, tl.int32).to(v.dtype, bitcast=True)
    return e


@triton.jit
def _next_epoch(counter_ptr, slot):
    """(epoch, parity) of a call on `slot`: one past the slot's last epoch (stored back by the reducing kernel)."""
    epoch = tl.load(counter_ptr + slot) + 1
    return epoch, epoch & 1


@triton.jit
def _sendable(v, BITS: tl.constexpr):
    """v as pushed: all ones means empty, so a NaN with those bits goes as the plain NaN."""
    return tl.where(_bits(v, BITS) == -1, float("nan"), v)


@triton.jit
def _push(x, cols, mask, slot, parity, peers_ptr, RANK: tl.constexpr, W: tl.constexpr, MAX_ROWS: tl.constexpr,
          ROW_BYTES: tl.constexpr, BITS: tl.constexpr):
    """Store x [BLOCK] (x's values at cols) into rows[parity, RANK, slot] of every peer."""
    sent = _sendable(x, BITS)
    for peer in tl.static_range(W):
        if peer != RANK:
            dst = _row_ptr(tl.load(peers_ptr + peer), parity, RANK, slot, x.dtype, W, MAX_ROWS, ROW_BYTES)
            tl.store(dst + cols, sent, mask=mask)


@triton.jit
def push_tile(tile, rm, rn, mask, peers_ptr, counter_ptr, RANK: tl.constexpr, W: tl.constexpr,
              MAX_ROWS: tl.constexpr, ROW_BYTES: tl.constexpr, BITS: tl.constexpr):
    """A producer's half of a call whose rows are reduced by launch(..., pushed=True): tile [BM, BN] (rows rm,
    columns rn of its output, in the output's dtype; mask [BM, BN]) -> rows[parity, RANK, m, rn] of every
    peer, each row m with the epoch of slot m. backends/triton/linear.py's GEMV calls it in its epilogue, so
    a row-parallel projection's tiles cross NVLink as they finish, before the reducing kernel starts."""
    parity = (tl.load(counter_ptr + rm, mask=rm < MAX_ROWS, other=0) + 1) & 1  # [BM]: _next_epoch's, per row
    sent = _sendable(tile, BITS)
    offs = ((parity * W + RANK) * MAX_ROWS + rm).to(tl.int64)[:, None] * (ROW_BYTES * 8 // BITS) + rn[None, :]
    for peer in tl.static_range(W):
        if peer != RANK:
            base = tl.multiple_of(tl.load(peers_ptr + peer).to(tl.pointer_type(tile.dtype)), 16)
            tl.store(base + offs, sent, mask=mask)


@triton.jit
def _receive(peers_ptr, parity, src, slot, cols, mask, ELEM, RANK: tl.constexpr, W: tl.constexpr,
             MAX_ROWS: tl.constexpr, ROW_BYTES: tl.constexpr, BITS: tl.constexpr):
    """Peer src's values [BLOCK] at rows[parity, src, slot] of this rank's buffer, once every one has landed;
    the slot is left empty for its next use."""
    row = _row_ptr(tl.load(peers_ptr + RANK), parity, src, slot, ELEM, W, MAX_ROWS, ROW_BYTES) + cols
    v = tl.load(row, mask=mask, other=0.0, volatile=True)
    pending = mask & (_bits(v, BITS) == -1)
    while tl.max(pending.to(tl.int32), axis=0) > 0:  # the row again (16-byte loads); landed values are kept
        v = tl.where(pending, tl.load(row, mask=mask, other=0.0, volatile=True), v)
        pending = mask & (_bits(v, BITS) == -1)
    tl.store(row, _empty(v, BITS), mask=mask)
    return v


@triton.jit
def _push_all_reduce_kernel(
    x_ptr, res_ptr, w_ptr, out_ptr, res_out_ptr, peers_ptr, counter_ptr,
    n, eps, stride_x, stride_res, stride_out, stride_res_out,
    RANK: tl.constexpr, W: tl.constexpr, MAX_ROWS: tl.constexpr, ROW_BYTES: tl.constexpr, BITS: tl.constexpr,
    NORM: tl.constexpr, UNIT_OFFSET: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr = False,
    PUSHED: tl.constexpr = False,  # x's producer has pushed it already (push_tile): only wait, sum, normalize
):
    cols = tl.arange(0, BLOCK)
    mask = cols < n
    if NORM:
        w = norm_weight(w_ptr, cols, mask, UNIT_OFFSET)  # before the wait: a weight
    pdl_wait_and_release(PDL)
    row = tl.program_id(0)
    elem = x_ptr.dtype.element_ty
    x = tl.load(x_ptr + row.to(tl.int64) * stride_x + cols, mask=mask, other=0.0)  # [BLOCK]
    epoch, parity = _next_epoch(counter_ptr, row)
    if not PUSHED:
        _push(x, cols, mask, row, parity, peers_ptr, RANK, W, MAX_ROWS, ROW_BYTES, BITS)
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for src in tl.static_range(W):
        if src == RANK:
            acc += x.to(tl.float32)
        else:
            acc += _receive(peers_ptr, parity, src, row, cols, mask, elem, RANK, W, MAX_ROWS, ROW_BYTES,
                            BITS).to(tl.float32)
    summed = acc.to(elem)  # the all-reduce's result, in x's dtype
    if NORM:
        r = tl.load(res_ptr + row.to(tl.int64) * stride_res + cols, mask=mask, other=0.0).to(tl.float32)
        new_res = (summed.to(tl.float32) + r).to(res_out_ptr.dtype.element_ty)  # rounded like the unfused add
        tl.store(res_out_ptr + row.to(tl.int64) * stride_res_out + cols, new_res, mask=mask)
        y = rmsnorm_values(new_res.to(tl.float32), w, n, eps)
        tl.store(out_ptr + row.to(tl.int64) * stride_out + cols, y.to(out_ptr.dtype.element_ty), mask=mask)
    else:
        tl.store(out_ptr + row.to(tl.int64) * stride_out + cols, summed, mask=mask)
    tl.store(counter_ptr + row, epoch)


@triton.jit
def _push_all_gather_kernel(
    x_ptr, out_ptr, peers_ptr, counter_ptr, total, n,
    RANK: tl.constexpr, W: tl.constexpr, MAX_ROWS: tl.constexpr, ROW_BYTES: tl.constexpr, BITS: tl.constexpr,
    BLOCK: tl.constexpr, PDL: tl.constexpr = False,
):
    """x: this rank's [R, n] shard, contiguous (total = R * n values) -> out [R, W * n]: out[r, s * n + k] =
    rank s's x[r, k]. Program p exchanges the p-th BLOCK of the flat shard through slot p."""
    pdl_wait_and_release(PDL)
    chunk = tl.program_id(0)
    offs = chunk.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)  # [BLOCK] flat positions in the shard
    mask = offs < total
    elem = x_ptr.dtype.element_ty
    x = tl.load(x_ptr + offs, mask=mask, other=0.0)
    cols = tl.arange(0, BLOCK)
    epoch, parity = _next_epoch(counter_ptr, chunk)
    _push(x, cols, mask, chunk, parity, peers_ptr, RANK, W, MAX_ROWS, ROW_BYTES, BITS)
    dst = out_ptr + (offs // n) * (W * n) + offs % n  # [BLOCK]: rank 0's column block
    for src in tl.static_range(W):
        if src == RANK:
            tl.store(dst + src * n, x, mask=mask)
        else:
            tl.store(dst + src * n, _receive(peers_ptr, parity, src, chunk, cols, mask, elem, RANK, W, MAX_ROWS,
                                             ROW_BYTES, BITS), mask=mask)
    tl.store(counter_ptr + chunk, epoch)


def _operand_problem(x: Tensor) -> Optional[str]:
    if not x.is_cuda:
        return "not a CUDA tensor"
    if x.dtype not in DTYPES:
        return f"dtype {x.dtype}"
    if x.dim() == 0 or x.numel() == 0:
        return "empty"
    return None


def unsupported_reason(x: Tensor, max_rows: int, row_bytes: int, residual: Optional[Tensor] = None,
                       weight: Optional[Tensor] = None) -> Optional[str]:
    """Why the kernel cannot take x (and the norm's operands); None if it can. Every rank decides the
    same way (the same shapes and dtypes), so no rank pushes while another takes another route."""
    why = _operand_problem(x)
    if why:
        return why
    n = x.shape[-1]
    m = x.numel() // n
    if m > max_rows:
        return f"{m} rows > {max_rows}"
    if n * x.element_size() > row_bytes:
        return f"a row of {n * x.element_size()} bytes > {row_bytes}"
    if residual is not None and (residual.shape != x.shape or residual.dtype != x.dtype):
        return "residual must have x's shape and dtype"
    if weight is not None and weight.shape != (n,):
        return f"norm weight must be [{n}]"
    return None


def gather_unsupported_reason(x: Tensor, max_rows: int, row_bytes: int) -> Optional[str]:
    """Why launch_gather cannot take x (the same on every rank); None if it can."""
    why = _operand_problem(x)
    if why:
        return why
    if x.numel() * x.element_size() > max_rows * row_bytes:
        return f"{x.numel() * x.element_size()} bytes > {max_rows} slots of {row_bytes}"
    return None


def launch_gather(x: Tensor, peers: Tensor, counters: Tensor, rank: int, world: int, max_rows: int,
                  row_bytes: int) -> Tensor:
    """x [..., n] -> [..., world * n]: every rank's x side by side on the last dim, rank order (the caller has
    checked gather_unsupported_reason)."""
    x = x.contiguous()
    n = x.shape[-1]
    out = torch.empty(*x.shape[:-1], world * n, dtype=x.dtype, device=x.device)
    block = row_bytes // x.element_size()  # one slot's worth of values per program
    _push_all_gather_kernel[(triton.cdiv(x.numel(), block),)](
        x, out, peers, counters, x.numel(), n,
        RANK=rank, W=world, MAX_ROWS=max_rows, ROW_BYTES=row_bytes, BITS=8 * x.element_size(), BLOCK=block,
        PDL=pdl_enabled(x.device), num_warps=16, **pdl_launch(x.device),
    )
    return out


def launch(x: Tensor, peers: Tensor, counters: Tensor, rank: int, world: int, max_rows: int,
           row_bytes: int, residual: Optional[Tensor] = None, weight: Optional[Tensor] = None, eps: float = 0.0,
           add_unit_offset: bool = False, pushed: bool = False):
    """The sum over ranks of x (plain), or (normed, new_residual) with residual and weight given.
    pushed: x's producer has pushed x itself (push_tile, through linear.launch(..., push=...)).

    peers: int64 [W] on x's device, every rank's buffer address as mapped here (each buffer all-one bytes
    before the first call); counters: int32 [max_rows] of this rank, zero before the first call (the caller has checked unsupported_reason)."""
    n = x.shape[-1]
    x2 = x.reshape(-1, n)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    m = x2.shape[0]
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    out2 = out.view(-1, n)
    norm = residual is not None
    if norm:
        r2 = residual.reshape(-1, n)
        if r2.stride(-1) != 1:
            r2 = r2.contiguous()
        res_out = torch.empty_like(out)
        res_out2, w = res_out.view(-1, n), weight.contiguous()
    else:
        r2, res_out2, w = x2, out2, x2  # unused (NORM=False)
    block = triton.next_power_of_2(n)
    _push_all_reduce_kernel[(m,)](
        x2, r2, w, out2, res_out2, peers, counters,
        n, float(eps), x2.stride(0), r2.stride(0), out2.stride(0), res_out2.stride(0),
        RANK=rank, W=world, MAX_ROWS=max_rows, ROW_BYTES=row_bytes, BITS=8 * x.element_size(), NORM=norm,
        UNIT_OFFSET=bool(add_unit_offset), BLOCK=block, PDL=pdl_enabled(x.device), num_warps=num_warps(block),
        PUSHED=pushed, **pdl_launch(x.device),
    )
    return (out, res_out) if norm else out
