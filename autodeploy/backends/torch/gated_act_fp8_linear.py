"""autodeploy::gated_act_fp8_linear — a gated-MLP activation and the FP8 linear that is its only reader (the
down projection), as one op (from transforms/fuse_act_into_fp8_gemv.py).

    gate, up [.., F], act, weight e4m3 [N, F], weight_scale fp32 ([N] | [] | [N, 1] | blocks), bias [N]?,
    quantize_input  ->  out [.., N]

        h   = gated_mlp_act(gate, up, act)                                  # [.., F] in gate's dtype
        out = fp8_linear(h, weight, weight_scale, bias, quantize_input)     # [.., N]

In an FP8 Llama, gate and up are the two halves of the fused gate_up fp8_linear's split (views of one
[.., 2F] buffer; the op reads them as they are). The reference is bit-identical to the pair it replaces
(the same functions, called as plain Python so torch.compile traces through them). The point is backend
selection: the Triton twin (backends/triton/gated_act_fp8_linear.py) writes the activation already
quantized to e4m3 in the activation kernel, so a decode MLP runs 2 launches after gate_up (act + quantize,
GEMV) instead of 3 (act, quantize, GEMV).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from autodeploy.backends.torch.gated_mlp import ACTIVATIONS
from autodeploy.backends.torch.gated_mlp import gated_mlp_act as _gated_mlp_act_op
from autodeploy.backends.torch.quant_linear import fp8_linear as _fp8_linear_op

# The plain functions behind the custom ops: traced (not opaque) when the reference is compiled.
_gated_mlp_act = _gated_mlp_act_op._init_fn
_fp8_linear = _fp8_linear_op._init_fn


@torch.library.custom_op("autodeploy::gated_act_fp8_linear", mutates_args=())
def gated_act_fp8_linear(
    gate: Tensor, up: Tensor, act: str, weight: Tensor, weight_scale: Tensor, bias: Optional[Tensor] = None,
    quantize_input: bool = True,
) -> Tensor:
    """-> fp8_linear(act(gate) * up) [.., N]."""
    h = _gated_mlp_act(gate, up, act)  # [.., F]
    return _fp8_linear(h, weight, weight_scale, bias, quantize_input)


@gated_act_fp8_linear.register_fake
def _(gate, up, act, weight, weight_scale, bias=None, quantize_input=True):
    torch._check(act in ACTIVATIONS, lambda: f"gated_act_fp8_linear: unknown activation '{act}'")
    return gate.new_empty(*gate.shape[:-1], weight.shape[0])
