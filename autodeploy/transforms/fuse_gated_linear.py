"""fuse_gated_linear: a gated MLP's fused gate_up linear and its activation become one autodeploy::gated_linear.

    before:  x ─ aten.linear(x, W_gate_up [2I, K], b?) ─ split(I, I) ─┬─ [0] gate ─┐
                                                                      └─ [1] up ───┴─ gated_mlp_act(gate, up, act) ─ y [.., I]
    after:   x ─ autodeploy.gated_linear(x, W_gate_up, b?, act) ─ y [.., I]

fuse_gemms (same stage, registered before this one) leaves every Llama-style MLP in the first form;
Phi3's own gate_up_proj gives it with chunk(2) straight from the export. The reference op runs the
same linear and activation (bit-identical); the point is backend selection, which offers the Triton
twin: at decode one GEMV launch computes both halves and the activation, where the unfused graph
runs the GEMV (writing [M, 2I]) and then a ~2-3 us activation kernel that reads it back, one of the
~110 small kernels of a 1B Llama decode step (16 of them are these activations).

Matched: gate and up are the first and second halves of the last dim of one aten.linear's output
(split_with_sizes [I, I], split(I) or chunk(2), then getitem 0 / 1), the halves and the split feed
nothing else, and the linear feeds only the split. Gate in the second half is left alone.
Off unless a recipe enables it (the GPU recipes do; on the CPU the op is the same linear + act).
"""

from __future__ import annotations

import operator

import torch
from pydantic import Field
from torch import fx

import autodeploy.transforms.fuse_gemms  # noqa: F401  (registers first: its fused gate_up linear is matched here)
from autodeploy.graph import aten, is_op, val
from autodeploy.ops import bound_args
from autodeploy.transforms.pipeline import Stage, TransformConfig, TransformInfo, register

ACT = torch.ops.autodeploy.gated_mlp_act.default
GATED_LINEAR = torch.ops.autodeploy.gated_linear.default
_SPLITS = (aten.split_with_sizes.default, aten.split.Tensor, aten.unsafe_split.Tensor, aten.chunk.default)


class FuseGatedLinearConfig(TransformConfig):
    enabled: bool = Field(False, description="Run this transform (the GPU recipes turn it on).")


def _last_dim(dim, ndim: int) -> bool:
    return isinstance(dim, int) and dim in (-1, ndim - 1)


def _halves_split(split: fx.Node, width: int, ndim: int) -> bool:
    """split / chunk of a [.., width] tensor into exactly two equal halves along the last dim."""
    args = list(split.args) + [None] * 2
    piece, dim = args[1], args[2] if args[2] is not None else 0  # chunk / split default to dim 0
    if width % 2 or not _last_dim(dim, ndim):
        return False
    if is_op(split, aten.chunk.default):
        return piece == 2
    if is_op(split, aten.split_with_sizes.default):
        return list(piece) == [width // 2] * 2
    return piece == width // 2  # split(I) of 2I: two pieces


def _source_linear(gate: fx.Node, up: fx.Node) -> tuple[fx.Node, list[fx.Node]] | None:
    """(linear, nodes between it and the activation) when gate / up are the two halves of its output."""
    if not isinstance(gate, fx.Node) or not isinstance(up, fx.Node) or len(gate.users) != 1 or len(up.users) != 1:
        return None
    if gate.target is not operator.getitem or up.target is not operator.getitem or gate.args[0] is not up.args[0]:
        return None
    split = gate.args[0]  # linear ─ split ─ getitem 0 / 1
    if gate.args[1] != 0 or up.args[1] != 1 or not is_op(split, _SPLITS) or set(split.users) != {gate, up}:
        return None
    lin = split.args[0]
    v = val(lin)
    if not isinstance(v, torch.Tensor) or not _halves_split(split, int(v.shape[-1]), v.dim()):
        return None
    if not is_op(lin, aten.linear.default) or lin.kwargs or set(lin.users) != {split}:
        return None
    wv = val(lin.args[1])
    if not isinstance(wv, torch.Tensor) or wv.dim() != 2 or wv.dtype != v.dtype:
        return None
    return lin, [gate, up, split]


def _fuse(gm: fx.GraphModule, act: fx.Node, lin: fx.Node, between: list[fx.Node]) -> None:
    graph = gm.graph
    x, w = lin.args[0], lin.args[1]
    bias = lin.args[2] if len(lin.args) > 2 else None
    with graph.inserting_before(act):
        fused = graph.call_function(GATED_LINEAR, (x, w, bias, bound_args(act)["act"]))
    fused.meta["val"] = val(act)
    for key in ("nn_module_stack", "stack_trace"):
        if key in lin.meta:
            fused.meta[key] = lin.meta[key]
    act.replace_all_uses_with(fused)
    for node in [act] + between + [lin]:
        graph.erase_node(node)


@register(Stage.FUSE, FuseGatedLinearConfig)
def apply(gm: fx.GraphModule, ctx, cfg) -> TransformInfo:
    sites = []
    for act in [n for n in gm.graph.nodes if is_op(n, ACT)]:
        args = bound_args(act)
        found = _source_linear(args["gate"], args["up"])
        if found is not None:
            sites.append((act, *found))
    for act, lin, between in sites:
        _fuse(gm, act, lin, between)
    return TransformInfo(matches=len(sites), changed=bool(sites))
