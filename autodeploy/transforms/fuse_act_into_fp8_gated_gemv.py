"""fuse_act_into_fp8_gated_gemv: an FP8 gated MLP after its add + RMSNorm, already two folds, becomes one op.

    before:  autodeploy.add_rmsnorm_fp8_linear(x, res, w_norm, eps, offset, W8_gate_up [2F, K], s, b?, q) ─┬─ [1] x + res
             └─ [0] gate_up [.., 2F] ─ split(F, F) ─┬─ [0] gate ─┐
                                                    └─ [1] up ───┴─ autodeploy.gated_act_fp8_linear(gate, up, act,
                                                                        W8_down [N, F], s_d, b_d?, q_d) ─ y [.., N]
    after:   autodeploy.add_rmsnorm_fp8_gated_mlp(x, res, w_norm, eps, offset, W8_gate_up, s, b?, q,
                                                 act, W8_down, s_d, b_d?, q_d) ─┬─ [0] y [.., N]
                                                                                └─ [1] x + res

fuse_norm_into_gemv and fuse_act_into_fp8_gemv (registered before this one, same stage) leave every FP8 Llama
MLP as the two ops above around a split. The reference is those ops composed (bit-identical); the point is
backend selection, which times the Triton twin (backends/triton/add_rmsnorm_fp8_gated_mlp.py: the gate_up
GEMV applies the activation in its epilogue and writes the block amaxes the down GEMV reads, so a decode MLP
runs 3 launches instead of 4: the ~2 us activation kernel of each 8B layer goes) against the 4-launch path
and keeps the faster.

Matched: the norm op's [0] has exactly one reader, an aten.split_with_sizes into (F, F) on the last dim
(2F = the gate_up weight's rows), whose two getitems are read only by one gated_act_fp8_linear, as its gate
([0]) and up ([1]); the down weight, scale and bias are get_attr parameters (fuse_act_into_fp8_gemv checked
them). The new residual's readers read the fused op's [1]. Left alone: gate_up read by anything else, a split
whose halves are read elsewhere (or swapped), an activation not folded into its down projection (it was read
twice, or the down projection is no FP8 linear). Without FP8 linears the graph is left as it is.
"""

from __future__ import annotations

import operator

import torch
from pydantic import Field
from torch import fx

import autodeploy.transforms.fuse_act_into_fp8_gemv  # noqa: F401  (registers first: it makes the act fold)
from autodeploy.graph import aten, is_op, nodes_of, val
from autodeploy.ops import bound_args
from autodeploy.transforms.pipeline import Stage, TransformConfig, TransformInfo, register

NORM_FP8_LINEAR = torch.ops.autodeploy.add_rmsnorm_fp8_linear.default
ACT_FP8_LINEAR = torch.ops.autodeploy.gated_act_fp8_linear.default
GATED_MLP = torch.ops.autodeploy.add_rmsnorm_fp8_gated_mlp.default
SPLIT = aten.split_with_sizes.default


class FuseActIntoFp8GatedGemvConfig(TransformConfig):
    enabled: bool = Field(False, description="Run this transform (on in the GPU recipes; a no-op without FP8 linears).")


def _getitems(node: fx.Node) -> dict[int, list[fx.Node]] | None:
    """{index: getitem readers} of a node read only through getitem; else None."""
    picks: dict[int, list[fx.Node]] = {}
    for user in node.users:
        if user.target is not operator.getitem or not isinstance(user.args[1], int):
            return None
        picks.setdefault(user.args[1], []).append(user)
    return picks


def _site(norm: fx.Node) -> tuple[fx.Node, list[fx.Node], list[fx.Node]] | None:
    """(the gated_act_fp8_linear, the nodes between it and `norm`, the new residual's getitems) when foldable."""
    outs = _getitems(norm)
    if outs is None or set(outs) - {0, 1} or len(outs.get(0, [])) != 1:
        return None
    gate_up = outs[0][0]
    gv, wv = val(gate_up), val(bound_args(norm)["weight"])
    if len(gate_up.users) != 1 or not isinstance(gv, torch.Tensor) or not isinstance(wv, torch.Tensor):
        return None
    split = next(iter(gate_up.users))
    f = wv.shape[0] // 2
    if not is_op(split, SPLIT) or split.args[0] is not gate_up or list(split.args[1]) != [f, f] or wv.shape[0] % 2:
        return None
    dim = split.args[2] if len(split.args) > 2 else split.kwargs.get("dim", 0)
    if dim not in (-1, gv.dim() - 1):
        return None
    halves = _getitems(split)
    if halves is None or sorted(halves) != [0, 1] or any(len(h) != 1 for h in halves.values()):
        return None
    gate, up = halves[0][0], halves[1][0]
    if len(gate.users) != 1 or len(up.users) != 1 or next(iter(gate.users)) is not next(iter(up.users)):
        return None
    act = next(iter(gate.users))
    if not is_op(act, ACT_FP8_LINEAR):
        return None
    a = bound_args(act)
    if a["gate"] is not gate or a["up"] is not up:
        return None
    if any(p is not None and p.op != "get_attr" for p in (a["weight"], a["weight_scale"], a["bias"])):
        return None
    return act, [gate, up, split, gate_up], outs.get(1, [])


def _fuse(gm: fx.GraphModule, norm: fx.Node, act: fx.Node, between: list[fx.Node], residuals: list[fx.Node]) -> None:
    graph = gm.graph
    n, a = bound_args(norm), bound_args(act)
    for p in (a["weight"], a["weight_scale"], a["bias"]):  # get_attr nodes read nothing: moving them up is valid
        if p is not None:
            norm.prepend(p)
    args = (n["x"], n["residual"], n["norm_weight"], n["eps"], n["add_unit_offset"], n["weight"], n["weight_scale"],
            n["bias"], n["quantize_input"], a["act"], a["weight"], a["weight_scale"], a["bias"], a["quantize_input"])
    # in the norm's place: the new residual's readers may come before the activation
    with graph.inserting_after(norm):
        fused = graph.call_function(GATED_MLP, args)
    with graph.inserting_after(fused):
        out = graph.call_function(operator.getitem, (fused, 0))  # [.., N]
    with graph.inserting_after(out):
        new_residual = graph.call_function(operator.getitem, (fused, 1))  # [.., K]
    res_val = val(norm)[1] if isinstance(val(norm), (tuple, list)) else None
    fused.meta["val"] = (val(act), res_val)
    out.meta["val"], new_residual.meta["val"] = val(act), res_val
    for node, source in ((fused, act), (out, act), (new_residual, norm)):
        for key in ("nn_module_stack", "stack_trace"):
            if key in source.meta:
                node.meta[key] = source.meta[key]
    act.replace_all_uses_with(out)
    for item in residuals:
        item.replace_all_uses_with(new_residual)
    for node in [act, *between, *residuals, norm]:
        graph.erase_node(node)


@register(Stage.FUSE, FuseActIntoFp8GatedGemvConfig)
def apply(gm: fx.GraphModule, ctx, cfg) -> TransformInfo:
    sites = [(norm, *found) for norm in nodes_of(gm, NORM_FP8_LINEAR) if (found := _site(norm)) is not None]
    for site in sites:
        _fuse(gm, *site)
    return TransformInfo(matches=len(sites), changed=bool(sites))
