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
distributed/symm_all_reduce.py) laid out as

    flags  int32 [W, MAX_ROWS]                              flag[src, m]: the last epoch rank src pushed row m
    rows   x's dtype [2 (parity), W (src), MAX_ROWS, ROW_BYTES / element size]

Program m takes row m:
    epoch  = counter[m] + 1     (counter: this rank's own memory; every rank runs the same calls in the same
                                 order, so the counters agree without talking), parity = epoch & 1
    push:  x[m] -> rows[parity, RANK, m] in every peer's buffer (stores over NVLink), a CTA barrier, then
           flag[RANK, m] = epoch in every peer's buffer (release, system scope)
    wait:  flag[src, m] >= epoch in this rank's buffer for every peer src (acquire, system scope)
    sum:   fp32, over src in rank order: its own x from registers, the peers' rows from its own buffer.
           Every rank adds the same values in the same order, so the replicated activations stay
           bit-identical across ranks.
    counter[m] = epoch

No second barrier: a peer writes parity p again (epoch e + 2) only after it has seen this rank's push of
e + 1, which this program made after it had read epoch e. A peer one epoch ahead writes the other
parity, so a flag may already read e + 1 while epoch e's row is intact: hence >= (wrap-around int32
arithmetic, as the counters wrap after 2^31 calls). torch's one-shot kernel (copy into its own buffer, a
barrier, loads from every peer, a second barrier) spends ~3 NVLink trips where this spends one, and the
add + RMSNorm after it was a launch of its own.

A wait has no time-out: like a NCCL collective, a call waits until every peer has made the same call.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from autodeploy.backends.triton._common import pdl_enabled, pdl_launch, pdl_wait_and_release
from autodeploy.backends.triton.rmsnorm import num_warps, rmsnorm_values

DTYPES = (torch.bfloat16, torch.float16, torch.float32)


@triton.jit
def _row_ptr(base, parity, src, row, ELEM, W: tl.constexpr, MAX_ROWS: tl.constexpr, DATA_OFFSET: tl.constexpr,
             ROW_BYTES: tl.constexpr):
    """rows[parity, src, row] of the buffer at int64 address `base`, as a pointer to ELEM."""
    offset = DATA_OFFSET + ((parity * W + src) * MAX_ROWS + row).to(tl.int64) * ROW_BYTES
    return (base + offset).to(tl.pointer_type(ELEM))


@triton.jit
def _exchange(x, cols, mask, slot, peers_ptr, counter_ptr, RANK: tl.constexpr, W: tl.constexpr,
              MAX_ROWS: tl.constexpr, DATA_OFFSET: tl.constexpr, ROW_BYTES: tl.constexpr):
    """The protocol of the module docstring for one slot: push x [BLOCK] (x's values at cols) to every peer,
    flag it, wait for every peer's push of the same epoch -> (epoch, parity, this rank's buffer address).
    The caller reads the peers' rows (_row_ptr) and stores `epoch` into counter[slot] last."""
    elem = x.dtype
    epoch = tl.load(counter_ptr + slot) + 1
    parity = epoch & 1
    for peer in tl.static_range(W):
        if peer != RANK:
            dst = _row_ptr(tl.load(peers_ptr + peer), parity, RANK, slot, elem, W, MAX_ROWS, DATA_OFFSET, ROW_BYTES)
            tl.store(dst + cols, x, mask=mask)
    tl.debug_barrier()  # every thread's row stores precede the flags' release
    for peer in tl.static_range(W):
        if peer != RANK:
            flag = tl.load(peers_ptr + peer).to(tl.pointer_type(tl.int32)) + RANK * MAX_ROWS + slot
            tl.atomic_xchg(flag, epoch, sem="release", scope="sys")
    mine = tl.load(peers_ptr + RANK)
    for src in tl.static_range(W):
        if src != RANK:
            flag = mine.to(tl.pointer_type(tl.int32)) + src * MAX_ROWS + slot
            seen = tl.atomic_add(flag, 0, sem="acquire", scope="sys")
            while seen - epoch < 0:
                seen = tl.atomic_add(flag, 0, sem="acquire", scope="sys")
    tl.debug_barrier()  # the acquiring thread's view before any thread reads the peers' rows
    return epoch, parity, mine


@triton.jit
def _push_all_reduce_kernel(
    x_ptr, res_ptr, w_ptr, out_ptr, res_out_ptr, peers_ptr, counter_ptr,
    n, eps, stride_x, stride_res, stride_out, stride_res_out,
    RANK: tl.constexpr, W: tl.constexpr, MAX_ROWS: tl.constexpr, DATA_OFFSET: tl.constexpr,
    ROW_BYTES: tl.constexpr, NORM: tl.constexpr, UNIT_OFFSET: tl.constexpr, BLOCK: tl.constexpr,
    PDL: tl.constexpr = False,
):
    pdl_wait_and_release(PDL)
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < n
    elem = x_ptr.dtype.element_ty
    x = tl.load(x_ptr + row.to(tl.int64) * stride_x + cols, mask=mask, other=0.0)  # [BLOCK]
    epoch, parity, mine = _exchange(x, cols, mask, row, peers_ptr, counter_ptr, RANK, W, MAX_ROWS, DATA_OFFSET,
                                    ROW_BYTES)
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for src in tl.static_range(W):
        if src == RANK:
            acc += x.to(tl.float32)
        else:
            src_row = _row_ptr(mine, parity, src, row, elem, W, MAX_ROWS, DATA_OFFSET, ROW_BYTES)
            acc += tl.load(src_row + cols, mask=mask, other=0.0, cache_modifier=".cg").to(tl.float32)
    summed = acc.to(elem)  # the all-reduce's result, in x's dtype
    if NORM:
        r = tl.load(res_ptr + row.to(tl.int64) * stride_res + cols, mask=mask, other=0.0).to(tl.float32)
        new_res = (summed.to(tl.float32) + r).to(res_out_ptr.dtype.element_ty)  # rounded like the unfused add
        tl.store(res_out_ptr + row.to(tl.int64) * stride_res_out + cols, new_res, mask=mask)
        y = rmsnorm_values(new_res.to(tl.float32), w_ptr, cols, mask, n, eps, UNIT_OFFSET)
        tl.store(out_ptr + row.to(tl.int64) * stride_out + cols, y.to(out_ptr.dtype.element_ty), mask=mask)
    else:
        tl.store(out_ptr + row.to(tl.int64) * stride_out + cols, summed, mask=mask)
    tl.store(counter_ptr + row, epoch)


@triton.jit
def _push_all_gather_kernel(
    x_ptr, out_ptr, peers_ptr, counter_ptr, total, n,
    RANK: tl.constexpr, W: tl.constexpr, MAX_ROWS: tl.constexpr, DATA_OFFSET: tl.constexpr,
    ROW_BYTES: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr = False,
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
    epoch, parity, mine = _exchange(x, cols, mask, chunk, peers_ptr, counter_ptr, RANK, W, MAX_ROWS, DATA_OFFSET,
                                    ROW_BYTES)
    dst = out_ptr + (offs // n) * (W * n) + offs % n  # [BLOCK]: rank 0's column block
    for src in tl.static_range(W):
        if src == RANK:
            tl.store(dst + src * n, x, mask=mask)
        else:
            src_row = _row_ptr(mine, parity, src, chunk, elem, W, MAX_ROWS, DATA_OFFSET, ROW_BYTES)
            tl.store(dst + src * n, tl.load(src_row + cols, mask=mask, other=0.0, cache_modifier=".cg"), mask=mask)
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


def launch_gather(x: Tensor, peers: Tensor, counters: Tensor, rank: int, world: int, max_rows: int, data_offset: int,
                  row_bytes: int) -> Tensor:
    """x [..., n] -> [..., world * n]: every rank's x side by side on the last dim, rank order (the caller has
    checked gather_unsupported_reason)."""
    x = x.contiguous()
    n = x.shape[-1]
    out = torch.empty(*x.shape[:-1], world * n, dtype=x.dtype, device=x.device)
    block = row_bytes // x.element_size()  # one slot's worth of values per program
    _push_all_gather_kernel[(triton.cdiv(x.numel(), block),)](
        x, out, peers, counters, x.numel(), n,
        RANK=rank, W=world, MAX_ROWS=max_rows, DATA_OFFSET=data_offset, ROW_BYTES=row_bytes, BLOCK=block,
        PDL=pdl_enabled(x.device), num_warps=16, **pdl_launch(x.device),
    )
    return out


def launch(x: Tensor, peers: Tensor, counters: Tensor, rank: int, world: int, max_rows: int, data_offset: int,
           row_bytes: int, residual: Optional[Tensor] = None, weight: Optional[Tensor] = None, eps: float = 0.0,
           add_unit_offset: bool = False):
    """The sum over ranks of x (plain), or (normed, new_residual) with residual and weight given.

    peers: int64 [W] on x's device, every rank's buffer address as mapped here; counters: int32
    [max_rows] of this rank, zero before the first call (the caller has checked unsupported_reason)."""
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
        RANK=rank, W=world, MAX_ROWS=max_rows, DATA_OFFSET=data_offset, ROW_BYTES=row_bytes, NORM=norm,
        UNIT_OFFSET=bool(add_unit_offset), BLOCK=block, PDL=pdl_enabled(x.device), num_warps=num_warps(block),
        **pdl_launch(x.device),
    )
    return (out, res_out) if norm else out
