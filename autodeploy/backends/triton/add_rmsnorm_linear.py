"""Residual add + RMSNorm as the decode GEMV's prologue: the Triton twins of autodeploy::add_rmsnorm_linear
and autodeploy::add_rmsnorm_gated_linear, and the unfused pairs as timed candidates beside them.

    triton_add_rmsnorm_linear(x, residual, norm_weight, eps, add_unit_offset, weight [N, K], bias?)
        -> (out [.., N], x + residual [.., K])
    triton_add_rmsnorm_gated_linear(..., weight [2I, K], bias?, act) -> (out [.., I], x + residual [.., K])

        rows <= 16 and the kernel takes the call: linear.py's / gated_linear.py's GEMV with NORM=True
        otherwise (prefill, K % 64, a device without kernels): the norm, then the projection
                   (the Triton norm kernel where it runs, else the reference; cuBLAS for the linear)

Why: a Llama decode layer runs add + RMSNorm (~1.8 us plus a launch gap) right before the qkv and the
gate_up GEMVs; those are 32 of the ~100 launches of a 1B decode step. The GEMV reads x rows of a few
KB (K = 2048 bf16: 4 KB), so every program can recompute the rows' statistics from L2 in its prologue
and normalize each x tile as it loads it; program (0, 0) writes x + residual for the layer's next add.

Beside the fused twin ("triton"), select_backends times what the graph ran before the fusion, as ops
of the same schema (registered below, CUDA only):

    "norm+cublas"   autodeploy::triton_fused_add_rmsnorm, then aten.linear / cuBLAS + the Triton act
    "norm+gemv"     autodeploy::triton_fused_add_rmsnorm, then the GEMV alone (triton_linear / _gated_linear)

so the fusion is kept only where it was timed faster (the 1B gate_up GEMV alone lost to cuBLAS: 29.4
vs 25.8 us, gated_linear.py); --no-autotune takes the fused twin.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from autodeploy.backends.triton import gated_linear, linear, rmsnorm
from autodeploy.backends.triton._common import on_cuda
from autodeploy.profiler.candidates import register_backend

# [.., K] -> [.., N]: the projection after the norm in the unfused forms
Project = Callable[[Tensor, Tensor, Optional[Tensor]], Tensor]


def add_rmsnorm(x: Tensor, residual: Tensor, norm_weight: Tensor, eps: float, add_unit_offset: bool):
    """(rmsnorm(x + residual), x + residual): the Triton norm kernel where it runs, else the reference."""
    if rmsnorm.supports(x, norm_weight, residual):
        return rmsnorm.launch(x, norm_weight, eps, add_unit_offset, residual=residual)
    return torch.ops.autodeploy.fused_add_rmsnorm(x, residual, norm_weight, eps, add_unit_offset)


def _gemv_or_cublas(normed: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    """triton_linear's GEMV up to 16 rows where it takes the operands; aten.linear otherwise."""
    if linear.operand_problem(normed, weight, bias) is None:
        return torch.ops.autodeploy.triton_linear(normed, weight, bias)
    return F.linear(normed, weight, bias)


def _gated(normed: Tensor, weight: Tensor, bias: Optional[Tensor], act: str, cublas: bool = False) -> Tensor:
    """The gated projection on Triton (GEMV + act, or cuBLAS + the Triton act) where it runs; else the reference."""
    if gated_linear.supports(normed, weight, bias, act):
        op = gated_linear.cublas_gated_linear if cublas else gated_linear.triton_gated_linear
        return op(normed, weight, bias, act)
    return torch.ops.autodeploy.gated_linear(normed, weight, bias, act)


def supports(x: Tensor, residual: Tensor, norm_weight: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> bool:
    """Can the fused kernel read these operands (at decode rows; more rows take the unfused path)?"""
    return linear.operand_problem(x, weight, bias) is None and linear.norm_problem(x, (residual, norm_weight)) is None


def supports_gated(x: Tensor, residual: Tensor, norm_weight: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
                   act: str = "silu") -> bool:
    return gated_linear.supports(x, weight, bias, act) and linear.norm_problem(x, (residual, norm_weight)) is None


@torch.library.custom_op("autodeploy::triton_add_rmsnorm_linear", mutates_args=())
def triton_add_rmsnorm_linear(
    x: Tensor, residual: Tensor, norm_weight: Tensor, eps: float, add_unit_offset: bool,
    weight: Tensor, bias: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor]:
    """-> (linear(rmsnorm(x + residual)) [.., N], x + residual [.., K]); one GEMV launch up to 16 rows."""
    norm = (residual, norm_weight, eps, add_unit_offset)
    if linear.unsupported_reason(x, weight, bias) or linear.norm_problem(x, norm):
        normed, new_residual = add_rmsnorm(x, residual, norm_weight, eps, add_unit_offset)
        return F.linear(normed, weight, bias), new_residual
    return linear.launch(x, weight, bias, norm=norm)


@triton_add_rmsnorm_linear.register_fake
def _(x, residual, norm_weight, eps, add_unit_offset, weight, bias=None):
    return torch.ops.autodeploy.add_rmsnorm_linear(x, residual, norm_weight, eps, add_unit_offset, weight, bias)


@torch.library.custom_op("autodeploy::triton_add_rmsnorm_gated_linear", mutates_args=())
def triton_add_rmsnorm_gated_linear(
    x: Tensor, residual: Tensor, norm_weight: Tensor, eps: float, add_unit_offset: bool,
    weight: Tensor, bias: Optional[Tensor] = None, act: str = "silu",
) -> tuple[Tensor, Tensor]:
    """-> (gated_linear(rmsnorm(x + residual)) [.., I], x + residual [.., K]); one GEMV launch up to 16 rows."""
    norm = (residual, norm_weight, eps, add_unit_offset)
    if gated_linear.unsupported_reason(x, weight, bias, act) or linear.norm_problem(x, norm):
        normed, new_residual = add_rmsnorm(x, residual, norm_weight, eps, add_unit_offset)
        return _gated(normed, weight, bias, act), new_residual
    return gated_linear.launch(x, weight, bias, act, norm=norm)


@triton_add_rmsnorm_gated_linear.register_fake
def _(x, residual, norm_weight, eps, add_unit_offset, weight, bias=None, act="silu"):
    return torch.ops.autodeploy.add_rmsnorm_gated_linear(x, residual, norm_weight, eps, add_unit_offset, weight, bias,
                                                         act)


# ---- the unfused pairs, as candidates of the same schema -----------------------------------------

def _norm_then_linear(name: str, project: Project):
    """autodeploy::<name>: the norm kernel, then `project`; the schema of autodeploy::add_rmsnorm_linear."""

    def impl(x: Tensor, residual: Tensor, norm_weight: Tensor, eps: float, add_unit_offset: bool,
             weight: Tensor, bias: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        normed, new_residual = add_rmsnorm(x, residual, norm_weight, eps, add_unit_offset)  # [.., K] each
        return project(normed, weight, bias), new_residual

    op = torch.library.custom_op(f"autodeploy::{name}", impl, mutates_args=())
    op.register_fake(lambda *a, **kw: torch.ops.autodeploy.add_rmsnorm_linear(*a, **kw))
    return getattr(torch.ops.autodeploy, name).default


def _norm_then_gated(name: str, cublas: bool):
    """autodeploy::<name>: the norm kernel, then the gated projection; the schema of add_rmsnorm_gated_linear."""

    def impl(x: Tensor, residual: Tensor, norm_weight: Tensor, eps: float, add_unit_offset: bool,
             weight: Tensor, bias: Optional[Tensor] = None, act: str = "silu") -> tuple[Tensor, Tensor]:
        normed, new_residual = add_rmsnorm(x, residual, norm_weight, eps, add_unit_offset)  # [.., K] each
        return _gated(normed, weight, bias, act, cublas), new_residual

    op = torch.library.custom_op(f"autodeploy::{name}", impl, mutates_args=())
    op.register_fake(lambda *a, **kw: torch.ops.autodeploy.add_rmsnorm_gated_linear(*a, **kw))
    return getattr(torch.ops.autodeploy, name).default


NORM_CUBLAS_LINEAR = _norm_then_linear("triton_norm_cublas_linear", F.linear)
NORM_GEMV_LINEAR = _norm_then_linear("triton_norm_gemv_linear", _gemv_or_cublas)
NORM_CUBLAS_GATED = _norm_then_gated("triton_norm_cublas_gated_linear", cublas=True)
NORM_GEMV_GATED = _norm_then_gated("triton_norm_gemv_gated_linear", cublas=False)

register_backend("add_rmsnorm_linear", "norm+cublas", NORM_CUBLAS_LINEAR, supports=on_cuda)
register_backend("add_rmsnorm_linear", "norm+gemv", NORM_GEMV_LINEAR, supports=on_cuda, pdl=True)
register_backend("add_rmsnorm_gated_linear", "norm+cublas", NORM_CUBLAS_GATED, supports=on_cuda)
register_backend("add_rmsnorm_gated_linear", "norm+gemv", NORM_GEMV_GATED, supports=on_cuda, pdl=True)
