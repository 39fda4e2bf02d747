"""Residual add + RMSNorm + per-token e4m3 quantization in one kernel, then the FP8 decode GEMV: the Triton
twin of autodeploy::add_rmsnorm_fp8_linear, and the unfused pairs as timed candidates beside it.

    triton_add_rmsnorm_fp8_linear(x, residual, norm_weight, eps, add_unit_offset,
                                  weight e4m3 [N, K], weight_scale, bias?, quantize_input)
        -> (out [.., N], x + residual [.., K])

        rows <= 16, quantize_input, operands the GEMV reads:
            _add_rmsnorm_quantize_kernel   program m: new residual [m, K] (x's dtype), then the normed row
                                           as e4m3 codes x_q [m, K] and its scale s_x [m] (fp32)
            fp8_gemv's GEMV, X_MODE 2      out = (w @ x_q^T) * s_w * s_x (+ bias)
        otherwise (prefill rows, weight-only FP8, block scales, K % 64, no kernels): the norm, then
            triton_fp8_linear (the Triton kernels where they run; > 16 rows go to torch._scaled_mm there)

Why: an 8B FP8 decode step (4.03 ms on the H100) ran at each of its 64 norm-fed sites (qkv, gate_up)
the add + RMSNorm kernel (~2.2 us), fp8_gemv's per-token quantization kernel (~1.7 us) and the GEMV. The
norm kernel already holds the whole normed row in registers, which is all the quantization needs (the
row's amax, then one division per element), so here it writes the e4m3 codes and the row's scale
instead of the normed row: 2 launches per site instead of 3 (64 of the step's 128 quantization
launches go), and the bf16 normed row is neither written nor read back. The GEMV reads e4m3 x either way.

Numerics: the row is normalized by rmsnorm.rmsnorm_row (the norm kernel's own math, same block and
warps), rounded to x's dtype as that kernel stores it, then quantized with _quantize_rows_kernel's amax,
scale and fp8_gemv.quantize_e4m3: the new residual, x_q and s_x are bit-identical to
triton_fused_add_rmsnorm followed by fp8_gemv's quantization kernel, and so is out to that pair's GEMV.
(The torch reference rounds a Llama normed row twice, so where a bf16 element differs from it by one ulp,
as the norm kernel's does, its e4m3 code may differ by one step.)

Beside the fused twin ("triton"), select_backends times what the graph ran before the fold, as ops of
the same schema (registered below, CUDA only):

    "norm+gemv"       triton_fused_add_rmsnorm, then triton_fp8_linear (quantization kernel + GEMV)
    "norm+scaled_mm"  triton_fused_add_rmsnorm, then autodeploy::fp8_linear (torch._scaled_mm on Hopper)

so the fold is kept only where it was timed faster; --no-autotune takes the fused twin.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from autodeploy.backends.triton import fp8_gemv, linear, rmsnorm
from autodeploy.backends.triton._common import (interpreted, on_cuda, pdl_enabled, pdl_launch,
                                                pdl_wait_and_release, rows_of)
from autodeploy.backends.triton.add_rmsnorm_linear import add_rmsnorm
from autodeploy.backends.triton.fp8_gemv import FP8_MAX, MIN_SCALE, quantize_e4m3
from autodeploy.profiler.candidates import register_backend
from autodeploy.quantization import fp8 as fp8_q


@triton.jit
def _add_rmsnorm_quantize_kernel(
    x_ptr, res_ptr, norm_w_ptr, res_out_ptr, xq_ptr, xs_ptr,
    K, stride_x, stride_res, eps,
    UNIT_OFFSET: tl.constexpr, BLOCK_K: tl.constexpr, EXACT: tl.constexpr, PDL: tl.constexpr = False,
):
    """Program m: res_out[m] = x[m] + residual[m]; y = rmsnorm(res_out[m]) in x's dtype;
    xs[m] = max(amax |y| / 448, 1e-12); xq[m] = e4m3(y / xs[m])."""
    cols = tl.arange(0, BLOCK_K)
    mask = cols < K
    w = rmsnorm.norm_weight(norm_w_ptr, cols, mask, UNIT_OFFSET)  # before the wait: a weight
    pdl_wait_and_release(PDL)
    m = tl.program_id(0).to(tl.int64)
    y = rmsnorm.rmsnorm_row(x_ptr + m * stride_x, res_ptr + m * stride_res, w, res_out_ptr + m * K,
                            cols, mask, K, eps, True)  # [BLOCK_K] fp32, 0 past K
    y = y.to(res_out_ptr.dtype.element_ty).to(tl.float32)  # the norm kernel's stored row, as the quantizer reads it
    scale = tl.maximum(tl.max(tl.abs(y), axis=0) / FP8_MAX, MIN_SCALE)
    tl.store(xq_ptr + m * K + cols, quantize_e4m3(y, scale, EXACT), mask=mask)
    tl.store(xs_ptr + m, scale)


def unsupported_reason(x: Tensor, residual: Tensor, norm_weight: Tensor, weight: Tensor, weight_scale: Tensor,
                       bias: Optional[Tensor] = None) -> Optional[str]:
    """None when the two kernels take this call (rows <= 16 included), else why not."""
    why = fp8_gemv.unsupported_reason(x, weight, weight_scale, bias) or linear.norm_problem(x, (residual, norm_weight))
    if why:
        return why
    if x.shape[-1] > rmsnorm.MAX_HIDDEN:
        return f"K = {x.shape[-1]} > {rmsnorm.MAX_HIDDEN} (one row per program)"
    return None


def supports(x: Tensor, residual: Tensor, norm_weight: Tensor, weight: Tensor, weight_scale: Tensor,
             bias: Optional[Tensor] = None, quantize_input: bool = True) -> bool:
    """Can the fused kernels read these operands (at decode rows; more rows take the unfused path)?"""
    return (bool(quantize_input) and fp8_gemv.operand_problem(x, weight, weight_scale, bias) is None
            and linear.norm_problem(x, (residual, norm_weight)) is None and x.shape[-1] <= rmsnorm.MAX_HIDDEN)


def add_rmsnorm_quantize(x2: Tensor, res2: Tensor, norm_weight: Tensor, eps: float, add_unit_offset: bool):
    """x2, res2 [M, K] (unit stride on K) -> (x_q e4m3 [M, K], s_x fp32 [M], x2 + res2 [M, K] in x2's dtype)."""
    m, k = x2.shape
    device = x2.device
    new_res = torch.empty(m, k, dtype=x2.dtype, device=device)  # [M, K]
    xq = torch.empty(m, k, dtype=fp8_q.DTYPE, device=device)  # [M, K]
    xs = torch.empty(m, dtype=torch.float32, device=device)  # [M]
    if m:
        block = triton.next_power_of_2(k)  # and the norm kernel's warps: the same sum of squares, bit for bit
        _add_rmsnorm_quantize_kernel[(m,)](
            x2, res2, norm_weight, new_res, xq, xs, k, x2.stride(0), res2.stride(0), float(eps),
            UNIT_OFFSET=bool(add_unit_offset), BLOCK_K=block, EXACT=interpreted(), PDL=pdl_enabled(device),
            num_warps=rmsnorm.num_warps(block), **pdl_launch(device),
        )
    return xq, xs, new_res


def launch(x: Tensor, residual: Tensor, norm_weight: Tensor, eps: float, add_unit_offset: bool, weight: Tensor,
           weight_scale: Tensor, bias: Optional[Tensor] = None, config: Optional[dict] = None):
    """(out [.., N], x + residual [.., K]) on the two kernels; raises NotImplementedError when they cannot.
    config: fp8_gemv's GEMV config (None: its launch_config)."""
    why = unsupported_reason(x, residual, norm_weight, weight, weight_scale, bias)
    if why:
        raise NotImplementedError(f"triton add_rmsnorm_fp8_linear: {why}")
    x2, res2 = rows_of(x), rows_of(residual)  # [M, K] each
    xq, xs, new_res = add_rmsnorm_quantize(x2, res2, norm_weight, eps, add_unit_offset)
    out = fp8_gemv.launch_quantized(xq, xs, weight, weight_scale, bias, x.dtype, config)  # [M, N]
    return out.reshape(*x.shape[:-1], weight.shape[0]), new_res.reshape(x.shape)


# [.., K] -> [.., N]: the FP8 projection after the norm in the unfused forms
Project = Callable[[Tensor, Tensor, Tensor, Optional[Tensor], bool], Tensor]


def _unfused(project: Project, x: Tensor, residual: Tensor, norm_weight: Tensor, eps: float, add_unit_offset: bool,
             weight: Tensor, weight_scale: Tensor, bias: Optional[Tensor], quantize_input: bool):
    normed, new_residual = add_rmsnorm(x, residual, norm_weight, eps, add_unit_offset)  # [.., K] each
    return project(normed, weight, weight_scale, bias, quantize_input), new_residual


@torch.library.custom_op("autodeploy::triton_add_rmsnorm_fp8_linear", mutates_args=())
def triton_add_rmsnorm_fp8_linear(
    x: Tensor, residual: Tensor, norm_weight: Tensor, eps: float, add_unit_offset: bool,
    weight: Tensor, weight_scale: Tensor, bias: Optional[Tensor] = None, quantize_input: bool = True,
) -> tuple[Tensor, Tensor]:
    """-> (fp8_linear(rmsnorm(x + residual)) [.., N], x + residual [.., K]); 2 launches up to 16 rows."""
    if not quantize_input or unsupported_reason(x, residual, norm_weight, weight, weight_scale, bias):
        return _unfused(torch.ops.autodeploy.triton_fp8_linear, x, residual, norm_weight, eps, add_unit_offset,
                        weight, weight_scale, bias, quantize_input)
    return launch(x, residual, norm_weight, eps, add_unit_offset, weight, weight_scale, bias)


@triton_add_rmsnorm_fp8_linear.register_fake
def _(x, residual, norm_weight, eps, add_unit_offset, weight, weight_scale, bias=None, quantize_input=True):
    return torch.ops.autodeploy.add_rmsnorm_fp8_linear(x, residual, norm_weight, eps, add_unit_offset, weight,
                                                       weight_scale, bias, quantize_input)


# ---- the unfused pairs, as candidates of the same schema -----------------------------------------

def _norm_then(name: str, project: Project):
    """autodeploy::<name>: the norm kernel, then `project`; the schema of autodeploy::add_rmsnorm_fp8_linear."""

    def impl(x: Tensor, residual: Tensor, norm_weight: Tensor, eps: float, add_unit_offset: bool, weight: Tensor,
             weight_scale: Tensor, bias: Optional[Tensor] = None, quantize_input: bool = True) -> tuple[Tensor, Tensor]:
        return _unfused(project, x, residual, norm_weight, eps, add_unit_offset, weight, weight_scale, bias,
                        quantize_input)

    op = torch.library.custom_op(f"autodeploy::{name}", impl, mutates_args=())
    op.register_fake(lambda *a, **kw: torch.ops.autodeploy.add_rmsnorm_fp8_linear(*a, **kw))
    return getattr(torch.ops.autodeploy, name).default


NORM_FP8_GEMV = _norm_then("triton_norm_fp8_gemv_linear", torch.ops.autodeploy.triton_fp8_linear)
NORM_SCALED_MM = _norm_then("triton_norm_scaled_mm_fp8_linear", torch.ops.autodeploy.fp8_linear)

register_backend("add_rmsnorm_fp8_linear", "norm+gemv", NORM_FP8_GEMV, supports=on_cuda, pdl=True)
register_backend("add_rmsnorm_fp8_linear", "norm+scaled_mm", NORM_SCALED_MM, supports=on_cuda)
