"""fuse_linear_all_reduce: a row-parallel linear whose partial sums feed autodeploy::all_reduce_add_rmsnorm
becomes one autodeploy::linear_all_reduce_add_rmsnorm.

    before:  x ─ aten.linear(x, W_shard) ─ partial ──┐
                                          residual ─┴─ autodeploy.all_reduce_add_rmsnorm(partial, residual, w, ...)
    after:   x, residual ─ autodeploy.linear_all_reduce_add_rmsnorm(x, W_shard, residual, w, eps, offset)
             (the same (normed, new_residual) pair; its getitem users are unchanged)

At TP=2 decode the push all-reduce (backends/triton/push_all_reduce.py) was the last kernel of each such
site to start: it waited for the whole GEMV, loaded the partial row and only then pushed it over
NVLink (4.3 us a site in the step's critical path on H200s, 64 sites an 8B step). Fused, the GEMV
pushes each output tile to the peers as it finishes and the reducing kernel only waits, sums and
normalizes. On the CPU, for prefill rows, and wherever the Triton GEMV or the push kernel cannot take
the operands, the op runs linear and then all_reduce_add_rmsnorm: no logit changes.

Runs after fuse_all_reduce_rmsnorm (whose op it matches) and before select_backends (which would
otherwise give the linear a backend of its own). Matched: a bias-free aten.linear (a row-split shard's
bias is added once, after the reduction, so it is not this pattern) whose one user reads it as x.
"""

from __future__ import annotations

import torch
from torch import fx

import autodeploy.distributed.collectives  # noqa: F401  (registers autodeploy::linear_all_reduce_add_rmsnorm)
import autodeploy.transforms.fuse_all_reduce_rmsnorm  # noqa: F401  (registers first: its op is matched here)
from autodeploy.graph import aten, is_op, nodes_of, replace_with_call
from autodeploy.ops import bound_args
from autodeploy.transforms.pipeline import Stage, TransformInfo, register

REDUCE_NORM = torch.ops.autodeploy.all_reduce_add_rmsnorm.default
FUSED = torch.ops.autodeploy.linear_all_reduce_add_rmsnorm.default
LINEAR = aten.linear.default


def _bias_free_linear(node: fx.Node) -> fx.Node | None:
    """The aten.linear (no bias, no kwargs) read only by `node`, as its x; None if x is anything else."""
    x = bound_args(node)["x"]
    if not (isinstance(x, fx.Node) and is_op(x, LINEAR) and len(x.users) == 1 and not x.kwargs):
        return None
    if len(x.args) > 2 and x.args[2] is not None:
        return None
    return x


@register(Stage.FUSE)
def apply(gm: fx.GraphModule, ctx, cfg) -> TransformInfo:
    matches = 0
    for node in list(nodes_of(gm, REDUCE_NORM)):
        lin = _bias_free_linear(node)
        if lin is None:
            continue
        args = bound_args(node)
        replace_with_call(node, FUSED, (lin.args[0], lin.args[1], args["residual"], args["weight"], args["eps"],
                                        args["add_unit_offset"]), erase=(lin,))
        matches += 1
    return TransformInfo(matches=matches, changed=bool(matches))
