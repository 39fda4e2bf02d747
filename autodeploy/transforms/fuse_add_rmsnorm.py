"""fuse_add_rmsnorm: a residual add that feeds an RMSNorm becomes one autodeploy::fused_add_rmsnorm.

    before:  x ──┐
             r ──┴─ aten.add ─ h ─┬─ autodeploy.rmsnorm(h, w, eps, offset) ─ y
                                  └─ (next residual add, ...)
    after:   x ──┐
             r ──┴─ autodeploy.fused_add_rmsnorm(x, r, w, eps, offset) ─┬─ [0] ─ y
                                                                        └─ [1] ─ h ─ (next residual add, ...)

Every decoder layer has two such sites (after attention, after the MLP; the second feeds the next
layer's input norm or the final norm). On the GPU each add is a kernel of its own: ~31 adds next to
33 norms per decode step of a 1B Llama. Backend selection then offers the Triton twin, which reads
x and r once and writes both outputs in one launch. The reference is bit-identical to the pair it
replaces, so the CPU path changes no logits.

Matched only where the add is a plain `aten.add.Tensor` (alpha 1) of two tensors with exactly the
norm input's shape and dtype: no broadcast, no type promotion. Where an add feeds several norms,
the first is fused and the others read the new residual. Anything else is left as it is.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
from torch import fx

from autodeploy.graph import aten, is_op, nodes_of, val
from autodeploy.ops import bound_args
from autodeploy.transforms.pipeline import Stage, TransformInfo, register

RMSNORM = torch.ops.autodeploy.rmsnorm.default
FUSED = torch.ops.autodeploy.fused_add_rmsnorm.default


def _dims(t: torch.Tensor) -> tuple[Any, ...]:
    """Shape as comparable values: symbolic dims by their expression (no guards added), others as ints."""
    return tuple(d.node.expr if isinstance(d, torch.SymInt) else int(d) for d in t.shape)


def _plain_add(add: Any) -> bool:
    """`a + b` of two tensors with the result's shape and dtype (no broadcast, no promotion, alpha 1)."""
    if not isinstance(add, fx.Node) or not is_op(add, aten.add.Tensor) or len(add.args) != 2:
        return False
    if any(k != "alpha" or v != 1 for k, v in add.kwargs.items()):
        return False
    out = val(add)
    ins = [val(a) for a in add.args]
    if not isinstance(out, torch.Tensor) or not all(isinstance(t, torch.Tensor) for t in ins):
        return False
    return all(_dims(t) == _dims(out) and t.dtype == out.dtype for t in ins)


def _sites(gm: fx.GraphModule) -> list[tuple[fx.Node, fx.Node]]:
    """(add, norm) pairs to fuse: the first RMSNorm reading each plain add whose weight exists before it."""
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    sites, seen = [], set()
    for norm in nodes_of(gm, RMSNORM):
        args = bound_args(norm)
        add, weight = args["x"], args["weight"]
        if add in seen or not _plain_add(add):
            continue
        # the fused op takes the add's place in the graph, so the weight must already be there
        if isinstance(weight, fx.Node) and order[weight] > order[add]:
            continue
        seen.add(add)
        sites.append((add, norm))
    return sites


def _fuse(gm: fx.GraphModule, add: fx.Node, norm: fx.Node) -> None:
    graph = gm.graph
    args = bound_args(norm)
    x, residual = add.args  # [..., h] each; the sum is commutative, so the names carry no meaning
    with graph.inserting_after(add):
        fused = graph.call_function(FUSED, (x, residual, args["weight"], args["eps"], args["add_unit_offset"]))
    with graph.inserting_after(fused):
        normed = graph.call_function(operator.getitem, (fused, 0))  # [..., h]
    with graph.inserting_after(normed):
        new_residual = graph.call_function(operator.getitem, (fused, 1))  # [..., h]
    fused.meta["val"] = (val(norm), val(add))
    normed.meta["val"], new_residual.meta["val"] = val(norm), val(add)
    for node, source in ((fused, norm), (normed, norm), (new_residual, add)):
        for key in ("nn_module_stack", "stack_trace"):
            if key in source.meta:
                node.meta[key] = source.meta[key]
    norm.replace_all_uses_with(normed)
    graph.erase_node(norm)
    add.replace_all_uses_with(new_residual)
    graph.erase_node(add)


@register(Stage.FUSE)
def apply(gm: fx.GraphModule, ctx, cfg) -> TransformInfo:
    sites = _sites(gm)
    for add, norm in sites:
        _fuse(gm, add, norm)
    return TransformInfo(matches=len(sites), changed=bool(sites))
