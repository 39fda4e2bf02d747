"""fuse_attention_into_fp8_gemv: a cached attention whose output feeds only an FP8 o projection joins it in one op.

    before:  autodeploy.cached_attention_rope(q, k, v, …) [T, n, d_v] ─ unsqueeze / reshape [1, T, n * d_v]
               ─ autodeploy.fp8_linear(x, W8 [N, n * d_v], s_w, b?, q) ─ y [1, T, N]
    after:   autodeploy.cached_attention_rope_fp8_linear(q, k, v, …, W8, s_w, b?, q) [T, N] ─ unsqueeze ─ y

Runs after fuse_rope_cached_attention (Stage.CACHE). The point is the Triton backend
(backends/triton/cached_attention_rope_fp8_linear.py): at decode its attention kernel writes each KV head's
max |out| beside out, and the FP8 GEMV takes each token's scale from those and quantizes its x tiles itself, so
fp8_gemv's quantization kernel (one launch a layer: ~1.4 us of an 8B FP8 layer's serial chain on an H200) goes.
The reference composes the two reference ops: on the CPU the numerics do not change.

The projection may already be a backend twin (select_backends, Stage.FUSE, runs before caching:
triton_fp8_linear, fp8_linear_tuned): all share fp8_linear's schema and meaning. Matched: the attention's output
reaches the projection's x through unsqueeze / view-like ops alone, each with no other user, as [.., T, n * d_v]
with the token order kept (a plain flatten of heads into channels); the weight and its scale get_attr
parameters. Left alone: an attention read by anything else, a bf16 / int4 / int8 o projection, a weight computed
in the graph. Off unless a recipe enables it (the GPU recipes do).
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import fx

import autodeploy.transforms.fuse_rope_cached_attention  # noqa: F401  (registers first: its op is matched here)
from autodeploy.graph import aten, is_op, nodes_of, val
from autodeploy.ops import bound_args
from autodeploy.transforms.pipeline import Stage, TransformConfig, TransformInfo, register

ATTENTION = torch.ops.autodeploy.cached_attention_rope.default
FUSED = torch.ops.autodeploy.cached_attention_rope_fp8_linear.default
_VIEWS = (aten.unsqueeze.default, aten.reshape.default, aten.view.default, aten._unsafe_view.default,
          aten.contiguous.default)


class FuseAttentionIntoFp8GemvConfig(TransformConfig):
    enabled: bool = Field(False, description="Run this transform (on in the GPU recipes; a no-op without FP8 o projections).")


def _fp8_linear_ops() -> tuple:
    """autodeploy::fp8_linear and whichever of its same-schema backend twins exist in this process."""
    ops = [torch.ops.autodeploy.fp8_linear.default]
    for name in ("triton_fp8_linear", "fp8_linear_tuned", "fp8_linear_compiled"):
        packet = getattr(torch.ops.autodeploy, name, None)
        if packet is not None:
            ops.append(packet.default)
    return tuple(ops)


def _projection(attn: fx.Node, linears: tuple) -> fx.Node | None:
    """The FP8 linear reading `attn`'s output as x through single-user views that only flatten its heads."""
    x = attn
    while len(x.users) == 1:
        (user,) = x.users
        if is_op(user, linears):
            break
        if not is_op(user, _VIEWS) or user.args[0] is not x:
            return None
        x = user
    else:
        return None
    (linear,) = x.users
    if bound_args(linear)["x"] is not x:
        return None
    out, xv = val(attn), val(x)  # [T, n, d_v], [.., T, n * d_v]
    if not (isinstance(out, torch.Tensor) and isinstance(xv, torch.Tensor)) or xv.dim() < 2:
        return None
    if str(xv.shape[-2]) != str(out.shape[0]) or str(xv.shape[-1]) != str(out.shape[1] * out.shape[2]):
        return None
    if any(str(d) != "1" for d in xv.shape[:-2]):
        return None
    a = bound_args(linear)
    if any(not (isinstance(a[p], fx.Node) and a[p].op == "get_attr") for p in ("weight", "weight_scale")):
        return None
    return linear


@register(Stage.CACHE, FuseAttentionIntoFp8GemvConfig, shape_prop=True)
def apply(gm: fx.GraphModule, ctx, cfg: FuseAttentionIntoFp8GemvConfig) -> TransformInfo:
    linears = _fp8_linear_ops()
    fused = 0
    for attn in nodes_of(gm, ATTENTION):
        linear = _projection(attn, linears)
        if linear is None:
            continue
        a, lin = bound_args(attn), bound_args(linear)
        g = gm.graph
        with g.inserting_before(linear):
            node = g.call_function(FUSED, (*a.values(), lin["weight"], lin["weight_scale"], lin["bias"],
                                           lin["quantize_input"]))  # [T, N]
            y = node
            for _ in range(val(linear).dim() - 2):  # back to the projection's [1, T, N]
                y = g.call_function(aten.unsqueeze.default, (y, 0))
        node.meta.update({k: v for k, v in attn.meta.items() if k in ("nn_module_stack", "stack_trace")})
        linear.replace_all_uses_with(y)
        chain = [linear]
        x = bound_args(linear)["x"]
        while x is not attn:
            chain.append(x)
            x = x.args[0]
        for n in chain + [attn]:
            g.erase_node(n)
        fused += 1
    info = TransformInfo(matches=fused, changed=fused > 0)
    if not fused and nodes_of(gm, ATTENTION) and any(nodes_of(gm, op) for op in linears):
        info.details["reason"] = "no attention read only by an FP8 projection"
    return info
