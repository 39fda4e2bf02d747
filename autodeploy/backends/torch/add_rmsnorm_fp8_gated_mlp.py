"""autodeploy::add_rmsnorm_fp8_gated_mlp — a whole FP8 gated MLP after its residual add + RMSNorm, as one op
(from transforms/fuse_act_into_fp8_gated_gemv.py): the two folds before it, composed.

    x, residual [.., K], norm_weight [K], weight_gate_up e4m3 [2F, K], scale_gate_up fp32, bias_gate_up [2F]?,
    quantize_gate_up, act, weight_down e4m3 [N, F], scale_down fp32, bias_down [N]?, quantize_down
        ->  (out [.., N], new_residual [.., K])

        gate_up, new_residual = add_rmsnorm_fp8_linear(x, residual, norm_weight, eps, add_unit_offset,
                                                       weight_gate_up, scale_gate_up, bias_gate_up, quantize_gate_up)
        gate, up = gate_up.split([F, F], -1)                                        # [.., F] views each
        out = gated_act_fp8_linear(gate, up, act, weight_down, scale_down, bias_down, quantize_down)

The reference is exactly those ops (their plain functions, so torch.compile traces through them): a graph
with this op is bit-identical to the graph of the three on the CPU. The point is backend selection: the
Triton twin (backends/triton/add_rmsnorm_fp8_gated_mlp.py) applies the activation in the gate_up GEMV's
epilogue and writes the block amaxes the down GEMV reads, so a decode MLP runs 3 launches instead of 4
(norm + quantize, gate_up GEMV + act, down GEMV): 32 launches of ~2 us a step fewer at 8B.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from autodeploy.backends.torch.add_rmsnorm_fp8_linear import add_rmsnorm_fp8_linear as _norm_fp8_op
from autodeploy.backends.torch.gated_act_fp8_linear import gated_act_fp8_linear as _act_fp8_op
from autodeploy.backends.torch.gated_mlp import ACTIVATIONS

# The plain functions behind the custom ops: traced (not opaque) when the reference is compiled.
_add_rmsnorm_fp8_linear = _norm_fp8_op._init_fn
_gated_act_fp8_linear = _act_fp8_op._init_fn


@torch.library.custom_op("autodeploy::add_rmsnorm_fp8_gated_mlp", mutates_args=())
def add_rmsnorm_fp8_gated_mlp(
    x: Tensor, residual: Tensor, norm_weight: Tensor, eps: float, add_unit_offset: bool,
    weight_gate_up: Tensor, scale_gate_up: Tensor, bias_gate_up: Optional[Tensor], quantize_gate_up: bool,
    act: str, weight_down: Tensor, scale_down: Tensor, bias_down: Optional[Tensor] = None, quantize_down: bool = True,
) -> tuple[Tensor, Tensor]:
    """-> (down(act(gate) * up) [.., N] of the normed x + residual, x + residual [.., K])."""
    gate_up, new_residual = _add_rmsnorm_fp8_linear(x, residual, norm_weight, eps, add_unit_offset, weight_gate_up,
                                                    scale_gate_up, bias_gate_up, quantize_gate_up)  # [.., 2F], [.., K]
    f = weight_gate_up.shape[0] // 2
    gate, up = gate_up.split([f, f], -1)  # [.., F] each: the graph's split
    out = _gated_act_fp8_linear(gate, up, act, weight_down, scale_down, bias_down, quantize_down)  # [.., N]
    return out, new_residual


@add_rmsnorm_fp8_gated_mlp.register_fake
def _(x, residual, norm_weight, eps, add_unit_offset, weight_gate_up, scale_gate_up, bias_gate_up, quantize_gate_up,
      act, weight_down, scale_down, bias_down=None, quantize_down=True):
    torch._check(act in ACTIVATIONS, lambda: f"add_rmsnorm_fp8_gated_mlp: unknown activation '{act}'")
    torch._check(weight_gate_up.shape[0] == 2 * weight_down.shape[1],
                 lambda: "add_rmsnorm_fp8_gated_mlp: gate_up must have twice the down projection's input rows")
    return (x.new_empty(*x.shape[:-1], weight_down.shape[0]),
            torch.empty_like(x, memory_format=torch.contiguous_format))
