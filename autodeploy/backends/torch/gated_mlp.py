"""autodeploy::gated_mlp_act — the activation of a gated MLP, act(gate) * up.

    gate [..., f], up [..., f] -> [..., f]      act in {"silu", "gelu_tanh", "gelu"}

The gate / up / down projections stay ordinary aten.linear nodes around it, so GEMM fusion,
sharding and quantization see them; this op only marks where the gated activation is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

ACTIVATIONS = ("silu", "gelu_tanh", "gelu")


def activate(x: Tensor, act: str) -> Tensor:
    if act == "silu":
        return F.silu(x)
    if act == "gelu_tanh":
        return F.gelu(x, approximate="tanh")
    if act == "gelu":
        return F.gelu(x)
    raise ValueError(f"gated_mlp_act: unknown activation '{act}' (known: {', '.join(ACTIVATIONS)})")


@torch.library.custom_op("autodeploy::gated_mlp_act", mutates_args=())
def gated_mlp_act(gate: Tensor, up: Tensor, act: str) -> Tensor:
    """gate [..., f], up [..., f] -> act(gate) * up [..., f]."""
    return activate(gate, act) * up


@gated_mlp_act.register_fake
def _(gate, up, act):
    torch._check(act in ACTIVATIONS, lambda: f"gated_mlp_act: unknown activation '{act}'")
    return torch.empty_like(gate, memory_format=torch.contiguous_format)
