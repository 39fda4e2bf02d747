"""RMSNorm and residual-add + RMSNorm in one pass: `autodeploy::triton_rmsnorm`, `autodeploy::triton_fused_add_rmsnorm`.

    rmsnorm(x [..., h], weight [h], eps, add_unit_offset) -> [..., h] in x's dtype
        y = x * rsqrt(mean(x^2) + eps) * w          (w = 1 + weight when add_unit_offset: Gemma)
    fused_add_rmsnorm(x, residual, weight, eps, add_unit_offset) -> (rmsnorm(x + residual), x + residual)

All math in fp32 with one rounding at the store. The reference (like transformers' Llama) also
rounds the normed row to x's dtype before the weight product, so a bf16 result may differ from it
by one ulp; Gemma's form rounds once there too. The residual
sum is rounded to the storage dtype before it is normalized, which is what the unfused graph
(`residual = residual + x; norm(residual)`) computes. The fused form reads x and residual once and
writes both outputs: 4 row-passes of memory instead of 5 for add + norm, and one launch fewer.

One program per row with the whole row in registers: h <= 65536 (Llama hidden sizes are 2k-16k).
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from autodeploy.backends.triton._common import (pdl_enabled, pdl_launch, pdl_wait_and_release, rows_of,
                                                unsupported_device_or_dtype)

MAX_HIDDEN = 65536


@triton.jit
def rmsnorm_row(x_row, res_row, w, res_out_row, cols, mask, h, eps, HAS_RESIDUAL: tl.constexpr):
    """rmsnorm of one row in fp32, before its one rounding (pointers at the row's start; cols [BLOCK_H];
    w: norm_weight's values). HAS_RESIDUAL: the row is x + residual, rounded to res_out's dtype and stored
    there first. Shared with add_rmsnorm_fp8_linear.py's norm + quantization kernel, so both normalize a
    row to the same bits."""
    x = tl.load(x_row + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        r = tl.load(res_row + cols, mask=mask, other=0.0).to(tl.float32)
        summed = (x + r).to(res_out_row.dtype.element_ty)  # round like the unfused add does
        tl.store(res_out_row + cols, summed, mask=mask)
        x = summed.to(tl.float32)
    return rmsnorm_values(x, w, h, eps)


@triton.jit
def norm_weight(w_ptr, cols, mask, UNIT_OFFSET: tl.constexpr):
    """The norm weight [BLOCK_H] in fp32 (0 past h), as the norm multiplies by it. A PDL kernel loads it
    before griddepcontrol.wait (a weight: no kernel of the step writes it), so its DRAM round trip overlaps
    the previous kernel instead of following the row's loads."""
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    if UNIT_OFFSET:  # Gemma stores w - 1
        w = w + 1.0
    return w


@triton.jit
def rmsnorm_values(x, w, h, eps):
    """rmsnorm of one row already in registers (fp32 x [BLOCK_H], zeros past h; w from norm_weight), before
    its one rounding. Shared with push_all_reduce.py, whose row arrives summed over the ranks rather than
    from memory."""
    inv_rms = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / h + eps)
    return x * inv_rms * w


@triton.jit
def _rmsnorm_kernel(
    x_ptr, res_ptr, w_ptr, out_ptr, res_out_ptr,
    stride_x, stride_res, stride_out, stride_res_out,
    h, eps,
    HAS_RESIDUAL: tl.constexpr, UNIT_OFFSET: tl.constexpr, BLOCK_H: tl.constexpr, PDL: tl.constexpr = False,
):
    cols = tl.arange(0, BLOCK_H)
    mask = cols < h
    w = norm_weight(w_ptr, cols, mask, UNIT_OFFSET)  # before the wait: a weight
    pdl_wait_and_release(PDL)
    row = tl.program_id(0).to(tl.int64)
    y = rmsnorm_row(x_ptr + row * stride_x, res_ptr + row * stride_res, w, res_out_ptr + row * stride_res_out,
                    cols, mask, h, eps, HAS_RESIDUAL)
    tl.store(out_ptr + row * stride_out + cols, y.to(out_ptr.dtype.element_ty), mask=mask)


def unsupported_reason(x: Tensor, weight: Tensor, residual: Optional[Tensor] = None) -> Optional[str]:
    """None when the kernel handles these inputs; otherwise the reason (for backend selection)."""
    why = unsupported_device_or_dtype(x, weight, residual)
    if why:
        return why
    if x.shape[-1] > MAX_HIDDEN:
        return f"hidden size {x.shape[-1]} > {MAX_HIDDEN} (one row per program)"
    if residual is not None and (residual.shape != x.shape or residual.dtype != x.dtype):
        return "residual must have x's shape and dtype"
    return None


def supports(x: Tensor, weight: Tensor, residual: Optional[Tensor] = None) -> bool:
    return unsupported_reason(x, weight, residual) is None


def num_warps(block_h: int) -> int:
    # 16 elements per thread keeps the row in registers: h=2048 -> 4 warps, h=8192 -> 16.
    return max(1, min(16, block_h // 512))


def launch(x: Tensor, weight: Tensor, eps: float, add_unit_offset: bool, residual: Optional[Tensor] = None):
    """Returns normed (and the new residual when `residual` is given), both shaped like x."""
    why = unsupported_reason(x, weight, residual)
    if why:
        raise NotImplementedError(f"triton rmsnorm: {why}")
    h = x.shape[-1]
    x2 = rows_of(x)  # [M, h]
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    out2 = out.view(-1, h)
    if residual is not None:
        r2 = rows_of(residual)
        res_out = torch.empty_like(out)
        res_out2 = res_out.view(-1, h)
    else:
        r2, res_out2, res_out = x2, out2, None  # unused by the kernel (HAS_RESIDUAL=False)
    m = x2.shape[0]
    if m > 0:
        block_h = triton.next_power_of_2(h)
        _rmsnorm_kernel[(m,)](
            x2, r2, weight.contiguous(), out2, res_out2,
            x2.stride(0), r2.stride(0), out2.stride(0), res_out2.stride(0),
            h, float(eps),
            HAS_RESIDUAL=residual is not None, UNIT_OFFSET=bool(add_unit_offset), BLOCK_H=block_h,
            PDL=pdl_enabled(x.device), num_warps=num_warps(block_h), **pdl_launch(x.device),
        )
    return out if residual is None else (out, res_out)


@torch.library.custom_op("autodeploy::triton_rmsnorm", mutates_args=())
def triton_rmsnorm(x: Tensor, weight: Tensor, eps: float, add_unit_offset: bool = False) -> Tensor:
    """x [..., h], weight [h] -> [..., h] (x.dtype)."""
    return launch(x, weight, eps, add_unit_offset)


@triton_rmsnorm.register_fake
def _(x, weight, eps, add_unit_offset=False):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op("autodeploy::triton_fused_add_rmsnorm", mutates_args=())
def triton_fused_add_rmsnorm(
    x: Tensor, residual: Tensor, weight: Tensor, eps: float, add_unit_offset: bool = False
) -> tuple[Tensor, Tensor]:
    """x, residual [..., h] -> (rmsnorm(x + residual) [..., h], x + residual [..., h])."""
    return launch(x, weight, eps, add_unit_offset, residual=residual)


@triton_fused_add_rmsnorm.register_fake
def _(x, residual, weight, eps, add_unit_offset=False):
    return (torch.empty_like(x, memory_format=torch.contiguous_format),
            torch.empty_like(x, memory_format=torch.contiguous_format))
