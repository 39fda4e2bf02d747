"""autodeploy::add_rmsnorm_fp8_linear — a residual add + RMSNorm and the FP8 linear that is the normed output's
only reader, as one op (from transforms/fuse_norm_into_gemv.py).

    x, residual [.., K], norm_weight [K], weight e4m3 [N, K], weight_scale fp32 ([N] | [] | [N, 1] | blocks),
    bias [N]?, quantize_input  ->  (out [.., N], new_residual [.., K])

        normed, new_residual = fused_add_rmsnorm(x, residual, norm_weight, eps, add_unit_offset)
        out = fp8_linear(normed, weight, weight_scale, bias, quantize_input)

In an FP8 Llama both norm-fed sites are this op: the fused qkv and the fused gate_up are each one
fp8_linear (quantize_fp8 fuses shared-input linears itself), the gate_up's split + gated_mlp_act stay
after it. The reference is bit-identical to the pair it replaces (the same functions, called as plain
Python so torch.compile traces through them). The point is backend selection: the Triton twin
(backends/triton/add_rmsnorm_fp8_linear.py) writes the normed row already quantized to e4m3 in the
norm kernel, so a decode site runs 2 launches (norm + quantize, GEMV) instead of 3 (norm, quantize, GEMV).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from autodeploy.backends.torch.fused_add_rmsnorm import fused_add_rmsnorm as _fused_add_rmsnorm_op
from autodeploy.backends.torch.quant_linear import fp8_linear as _fp8_linear_op

# The plain functions behind the custom ops: traced (not opaque) when the reference is compiled.
_fused_add_rmsnorm = _fused_add_rmsnorm_op._init_fn
_fp8_linear = _fp8_linear_op._init_fn


@torch.library.custom_op("autodeploy::add_rmsnorm_fp8_linear", mutates_args=())
def add_rmsnorm_fp8_linear(
    x: Tensor, residual: Tensor, norm_weight: Tensor, eps: float, add_unit_offset: bool,
    weight: Tensor, weight_scale: Tensor, bias: Optional[Tensor] = None, quantize_input: bool = True,
) -> tuple[Tensor, Tensor]:
    """-> (fp8_linear(rmsnorm(x + residual)) [.., N], x + residual [.., K])."""
    normed, new_residual = _fused_add_rmsnorm(x, residual, norm_weight, eps, add_unit_offset)  # [.., K] each
    return _fp8_linear(normed, weight, weight_scale, bias, quantize_input), new_residual


@add_rmsnorm_fp8_linear.register_fake
def _(x, residual, norm_weight, eps, add_unit_offset, weight, weight_scale, bias=None, quantize_input=True):
    return x.new_empty(*x.shape[:-1], weight.shape[0]), torch.empty_like(x, memory_format=torch.contiguous_format)
