"""autodeploy::gated_linear — a gated MLP's fused gate_up projection and its activation, as one op.

    x [.., K], weight [2I, K] (gate rows first, then up), bias [2I]? -> act(x @ Wg^T + bg) * (x @ Wu^T + bu) [.., I]

        gate_up = linear(x, weight, bias)                  # [.., 2I]: the GEMM fuse_gemms left
        out     = gated_mlp_act(gate_up[.., :I], gate_up[.., I:], act)

The reference is bit-identical to the linear -> split -> `autodeploy::gated_mlp_act` it replaces (the
same linear, the same activation function called as plain Python). The point of the op is its Triton
twin `autodeploy::triton_gated_linear` (backends/triton/gated_linear.py): at decode one GEMV launch
whose programs read matching gate and up weight rows and store act(g) * u, instead of a GEMM that
writes [.., 2I], then an activation kernel that reads it back.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from autodeploy.backends.torch.gated_mlp import ACTIVATIONS
from autodeploy.backends.torch.gated_mlp import gated_mlp_act as _gated_mlp_act_op

# The plain function behind the custom op: traced (not opaque) when the reference is compiled.
_gated_mlp_act = _gated_mlp_act_op._init_fn


@torch.library.custom_op("autodeploy::gated_linear", mutates_args=())
def gated_linear(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, act: str = "silu") -> Tensor:
    """x [.., K], weight [2I, K], bias [2I]? -> act(gate) * up [.., I]."""
    i = weight.shape[0] // 2
    gate_up = F.linear(x, weight, bias)  # [.., 2I]
    return _gated_mlp_act(gate_up[..., :i], gate_up[..., i:], act)


@gated_linear.register_fake
def _(x, weight, bias=None, act="silu"):
    torch._check(act in ACTIVATIONS, lambda: f"gated_linear: unknown activation '{act}'")
    torch._check(weight.shape[0] % 2 == 0, lambda: f"gated_linear: odd gate_up width {weight.shape[0]}")
    return x.new_empty(*x.shape[:-1], weight.shape[0] // 2)
