"""autodeploy::add_rmsnorm_linear / add_rmsnorm_gated_linear — a residual add + RMSNorm and the projection
that is the normed output's only reader, as one op (from transforms/fuse_norm_into_gemv.py).

    x, residual [.., K], norm_weight [K], weight [N, K], bias [N]? -> (out [.., N], new_residual [.., K])

        normed, new_residual = fused_add_rmsnorm(x, residual, norm_weight, eps, add_unit_offset)
        out = linear(normed, weight, bias)                          add_rmsnorm_linear
        out = gated_linear(normed, weight, bias, act)  [.., N/2]    add_rmsnorm_gated_linear

The references are bit-identical to the pair they replace (the same functions, called as plain
Python so torch.compile traces through them). The point of the ops is backend selection: their Triton
twins (backends/triton/add_rmsnorm_linear.py) run the add + norm as the decode GEMV's prologue, one
launch instead of the norm kernel and the GEMV, and the unfused pair stays a timed candidate.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from autodeploy.backends.torch.fused_add_rmsnorm import fused_add_rmsnorm as _fused_add_rmsnorm_op
from autodeploy.backends.torch.gated_linear import gated_linear as _gated_linear_op

# The plain functions behind the custom ops: traced (not opaque) when the reference is compiled.
_fused_add_rmsnorm = _fused_add_rmsnorm_op._init_fn
_gated_linear = _gated_linear_op._init_fn


@torch.library.custom_op("autodeploy::add_rmsnorm_linear", mutates_args=())
def add_rmsnorm_linear(
    x: Tensor, residual: Tensor, norm_weight: Tensor, eps: float, add_unit_offset: bool,
    weight: Tensor, bias: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor]:
    """-> (linear(rmsnorm(x + residual)) [.., N], x + residual [.., K])."""
    normed, new_residual = _fused_add_rmsnorm(x, residual, norm_weight, eps, add_unit_offset)  # [.., K] each
    return F.linear(normed, weight, bias), new_residual


@add_rmsnorm_linear.register_fake
def _(x, residual, norm_weight, eps, add_unit_offset, weight, bias=None):
    return x.new_empty(*x.shape[:-1], weight.shape[0]), torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op("autodeploy::add_rmsnorm_gated_linear", mutates_args=())
def add_rmsnorm_gated_linear(
    x: Tensor, residual: Tensor, norm_weight: Tensor, eps: float, add_unit_offset: bool,
    weight: Tensor, bias: Optional[Tensor] = None, act: str = "silu",
) -> tuple[Tensor, Tensor]:
    """-> (gated_linear(rmsnorm(x + residual), weight [2I, K]) [.., I], x + residual [.., K])."""
    normed, new_residual = _fused_add_rmsnorm(x, residual, norm_weight, eps, add_unit_offset)  # [.., K] each
    return _gated_linear(normed, weight, bias, act), new_residual


@add_rmsnorm_gated_linear.register_fake
def _(x, residual, norm_weight, eps, add_unit_offset, weight, bias=None, act="silu"):
    return (x.new_empty(*x.shape[:-1], weight.shape[0] // 2),
            torch.empty_like(x, memory_format=torch.contiguous_format))
