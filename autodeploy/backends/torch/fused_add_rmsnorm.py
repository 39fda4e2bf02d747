"""autodeploy::fused_add_rmsnorm — a decoder layer's residual add and the RMSNorm after it, as one op.

    x [..., h], residual [..., h], weight [h] -> (normed [..., h], new_residual [..., h]), both in x's dtype

        new_residual = x + residual                        # the add of the unfused graph, same rounding
        normed       = rmsnorm(new_residual, weight, eps, add_unit_offset)

The reference is bit-identical to the unfused `aten.add` + `autodeploy::rmsnorm` pair: the same add
(IEEE addition is commutative, so which operand is called `residual` does not change a bit) and the
same normalization function, called as plain Python so torch.compile traces through it. The point of
the op is its Triton twin `autodeploy::triton_fused_add_rmsnorm` (backends/triton/rmsnorm.py): one
launch that reads x and residual once and writes both outputs, instead of an add kernel and a norm
kernel per site (about 2 sites per layer, plus the final norm).
"""

from __future__ import annotations

import torch
from torch import Tensor

from autodeploy.backends.torch.rmsnorm import rmsnorm as _rmsnorm_op

# The plain function behind the custom op: traced (not opaque) when the reference is compiled.
_rmsnorm = _rmsnorm_op._init_fn


@torch.library.custom_op("autodeploy::fused_add_rmsnorm", mutates_args=())
def fused_add_rmsnorm(
    x: Tensor, residual: Tensor, weight: Tensor, eps: float, add_unit_offset: bool = False
) -> tuple[Tensor, Tensor]:
    """x, residual [..., h], weight [h] -> (rmsnorm(x + residual) [..., h], x + residual [..., h])."""
    new_residual = x + residual  # [..., h]
    return _rmsnorm(new_residual, weight, eps, add_unit_offset), new_residual


@fused_add_rmsnorm.register_fake
def _(x, residual, weight, eps, add_unit_offset=False):
    return (torch.empty_like(x, memory_format=torch.contiguous_format),
            torch.empty_like(x, memory_format=torch.contiguous_format))
