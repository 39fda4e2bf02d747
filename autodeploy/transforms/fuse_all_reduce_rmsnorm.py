"""fuse_all_reduce_rmsnorm: a tensor-parallel all-reduce feeding a residual add + RMSNorm becomes one
autodeploy::all_reduce_add_rmsnorm.

    before:  partial ─ autodeploy.all_reduce ─ s ──┐
                                          residual ─┴─ autodeploy.fused_add_rmsnorm(s, residual, w, eps, offset)
    after:   partial ──┐
             residual ─┴─ autodeploy.all_reduce_add_rmsnorm(partial, residual, w, eps, offset)
                          (the same (normed, new_residual) pair; its getitem users are unchanged)

A sharded decoder layer has two such sites (after o_proj and after down_proj, each a row-split linear
followed by an all-reduce, then the residual add and the next norm): 64 of the 65 all-reduces of an 8B
Llama decode step at TP=2. On CUDA the fused op is one push kernel (backends/triton/push_all_reduce.py:
each rank stores its row into its peers' memory, then sums and normalizes) instead of an all-reduce
kernel and a norm kernel; elsewhere it runs the two ops it replaces, so no logit changes.

Runs after fuse_add_rmsnorm (which makes the fused add + norm) and before fuse_norm_into_gemv (which
would fold that norm into the next GEMV instead). Matched only where the all-reduce's one user is the
add + norm, as either operand of the (commutative) add.
"""

from __future__ import annotations

import torch
from torch import fx

import autodeploy.distributed.collectives  # noqa: F401  (registers autodeploy::all_reduce_add_rmsnorm)
import autodeploy.transforms.fuse_add_rmsnorm  # noqa: F401  (registers first: its op is matched here)
from autodeploy.graph import is_op, nodes_of, replace_with_call
from autodeploy.ops import bound_args
from autodeploy.transforms.pipeline import Stage, TransformInfo, register

ALL_REDUCE = torch.ops.autodeploy.all_reduce.default
ADD_NORM = torch.ops.autodeploy.fused_add_rmsnorm.default
FUSED = torch.ops.autodeploy.all_reduce_add_rmsnorm.default


def _reduced_operand(node: fx.Node) -> tuple[fx.Node, fx.Node] | None:
    """(the all-reduce, the other operand) of an add + norm whose x or residual is an all-reduce used only there."""
    args = bound_args(node)
    x, residual = args["x"], args["residual"]
    for reduced, other in ((x, residual), (residual, x)):
        if isinstance(reduced, fx.Node) and is_op(reduced, ALL_REDUCE) and len(reduced.users) == 1 and reduced is not other:
            return reduced, other
    return None


@register(Stage.FUSE)
def apply(gm: fx.GraphModule, ctx, cfg) -> TransformInfo:
    matches = 0
    for node in list(nodes_of(gm, ADD_NORM)):
        found = _reduced_operand(node)
        if found is None:
            continue
        reduced, other = found
        args = bound_args(node)
        replace_with_call(node, FUSED, (reduced.args[0], other, args["weight"], args["eps"], args["add_unit_offset"]),
                          erase=(reduced,))
        matches += 1
    return TransformInfo(matches=matches, changed=bool(matches))
