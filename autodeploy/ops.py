"""Makes the canonical ops exist: `import autodeploy.ops` registers every `torch.ops.autodeploy.*` op.

    torch.ops.autodeploy.attention(q, k, v, sinks, scale, causal, sliding_window, logit_softcap)
    torch.ops.autodeploy.rope(q, k, cos, sin, interleaved)
    torch.ops.autodeploy.rmsnorm(x, weight, eps, add_unit_offset)
    torch.ops.autodeploy.gated_mlp_act(gate, up, act)
    torch.ops.autodeploy.gated_linear(x, weight_gate_up, bias, act)   (from transforms/fuse_gated_linear.py)
    torch.ops.autodeploy.add_rmsnorm_linear(x, residual, norm_weight, eps, add_unit_offset, weight, bias)
    torch.ops.autodeploy.add_rmsnorm_gated_linear(..., weight_gate_up, bias, act)
    torch.ops.autodeploy.add_rmsnorm_fp8_linear(..., weight e4m3, weight_scale, bias, quantize_input)
                                   (the three from transforms/fuse_norm_into_gemv.py)
    torch.ops.autodeploy.gated_act_fp8_linear(gate, up, act, weight e4m3, weight_scale, bias, quantize_input)
                                   (from transforms/fuse_act_into_fp8_gemv.py)

`bound_args(node)` reads a canonical op node's arguments by schema name (defaults filled in), so
later transforms never reach into `node.args[3]`.
"""

from __future__ import annotations

from typing import Any

from torch import fx

import autodeploy.backends.torch  # noqa: F401  (registers the ops)


def bound_args(node: fx.Node) -> dict[str, Any]:
    """{argument name: value} of a call to an OpOverload, defaults included."""
    schema = node.target._schema
    out: dict[str, Any] = {}
    for i, arg in enumerate(schema.arguments):
        if i < len(node.args):
            out[arg.name] = node.args[i]
        elif arg.name in node.kwargs:
            out[arg.name] = node.kwargs[arg.name]
        elif arg.has_default_value():
            out[arg.name] = arg.default_value
        else:
            raise ValueError(f"{node.format_node()}: missing argument '{arg.name}'")
    return out
