"""Expert sharding: each autodeploy::moe split over the ranks, by experts (EP) or inside them (TP).

    ep:  rank r holds experts [r*E/W, (r+1)*E/W) whole; every rank routes over all E (the router
         stays whole), computes the pairs routed to its experts, and an all_reduce adds the ranks'
         partial outputs.  w_gate_up [E/W, 2f, h], w_down [E/W, h, f]
    tp:  every rank holds all experts with f/W of each one's hidden units (gate and up rows, down
         columns); the down projections' partial sums add up in the all_reduce. The down bias is
         added by rank 0 alone.  w_gate_up [E, 2f/W, h], w_down [E, h, f/W]

"auto" takes ep when the experts divide over the ranks (decode reads 1/W of the expert bytes per
rank whatever the routing), else tp. Neither possible raises ShardingError before weights load.
Expert weights stored transposed (GPT-OSS [E, h, 2f], seen through a transpose node) are sliced
on their stored dims.
"""

from __future__ import annotations

import torch
from torch import fx

import autodeploy.distributed.collectives  # noqa: F401  (registers the collectives)
import autodeploy.distributed.moe_ep  # noqa: F401  (registers autodeploy::moe_ep)
from autodeploy.distributed.plan import ParamShard, ShardGroup, ShardingError, Slice
from autodeploy.distributed.rewrite import localize_param
from autodeploy.graph import aten, is_op, val
from autodeploy.models.weights import checkpoint_name
from autodeploy.ops import bound_args

ops = torch.ops.autodeploy
# autodeploy::moe's arguments that hold per-expert tensors, with their logical dims [E, ...]
_EXPERT_ARGS = ("w_gate_up", "w_down", "b_gate_up", "b_down")


def _stored(arg) -> tuple[fx.Node, list[int]] | None:
    """(get_attr node, perm) with stored dim perm[d] for logical dim d; None for a non-parameter."""
    if not isinstance(arg, fx.Node):
        return None
    if arg.op == "get_attr":
        return arg, list(range(val(arg).dim()))
    if is_op(arg, aten.transpose) and isinstance(arg.args[0], fx.Node) and arg.args[0].op == "get_attr":
        p = list(range(val(arg).dim()))
        a, b = arg.args[1] % len(p), arg.args[2] % len(p)
        p[a], p[b] = b, a
        return arg.args[0], p
    return None


def _block_path(moe: fx.Node, weight: fx.Node) -> str:
    return checkpoint_name(weight.target).rsplit(".", 1)[0]


def expert_group(moe: fx.Node, world: int, rank: int, mode: str) -> ShardGroup:
    """The group of one autodeploy::moe node for `rank` of `world` (nothing changes in the graph)."""
    a = bound_args(moe)
    stored = {k: _stored(a[k]) for k in _EXPERT_ARGS if a[k] is not None}
    if any(v is None for v in stored.values()) or "w_gate_up" not in stored:
        raise ShardingError(f"{moe.name}: expert weights are not parameters of the graph; cannot split them")
    path = _block_path(moe, stored["w_gate_up"][0])
    e, f = int(val(a["w_gate_up"]).shape[0]), int(val(a["w_down"]).shape[2])
    if mode == "auto":
        mode = "ep" if e % world == 0 else "tp"
    if mode == "ep" and e % world:
        raise ShardingError(f"{path}: {e} experts do not split over {world} ranks (shard_experts.mode=ep)")
    if mode == "tp" and f % world:
        raise ShardingError(f"{path}: {e} experts and their {f} hidden units both do not split over {world} ranks")
    params: dict[str, ParamShard] = {}

    def add(arg: str, logical_dim: int, sl: Slice | None, zeros: bool = False) -> None:
        if arg not in stored:
            return
        node, perm = stored[arg]
        params[node.target] = ParamShard(node.target, None if sl is None else sl.with_dim(perm[logical_dim]), zeros)

    if mode == "ep":
        sl = Slice.even(0, e, world, rank)
        for arg in stored:
            add(arg, 0, sl)
        start = sl.ranges[0][0]
        split, extra = f"experts {e} -> {e // world} (experts {start}-{start + e // world - 1})", {"expert_start": start}
    else:
        f_l = f // world
        lo, hi = rank * f_l, (rank + 1) * f_l
        gate_up = (((2 * lo, 2 * hi),) if a["interleaved_gate_up"] else ((lo, hi), (f + lo, f + hi)))
        add("w_gate_up", 1, Slice(1, gate_up, 2 * f))
        add("b_gate_up", 1, Slice(1, gate_up, 2 * f))
        add("w_down", 2, Slice(2, ((lo, hi),), f))
        if rank != 0:
            add("b_down", 0, None, zeros=True)
        split, extra = f"expert hidden {f} -> {f_l} (all {e} experts)", {}
    return ShardGroup("experts", path, split, "all_reduce", params=params, anchor=moe, extra={"mode": mode, **extra})


def check_exclusive(gm: fx.GraphModule, group: ShardGroup) -> None:
    """A sliced expert weight may be read by this MoE alone (through its transpose at most)."""
    moe = group.anchor
    for node in gm.graph.nodes:
        if node.op == "get_attr" and node.target in group.params:
            for user in node.users:
                if user is moe or (is_op(user, aten.transpose) and set(user.users) == {moe}):
                    continue
                raise ShardingError(f"{node.target}: expert weight also read by {user.name}; cannot split it")


def apply_expert_group(gm: fx.GraphModule, group: ShardGroup) -> None:
    for shard in group.params.values():
        localize_param(gm, shard)
    moe = group.anchor
    graph = gm.graph
    node = moe
    if group.extra["mode"] == "ep":
        a = bound_args(moe)  # by schema name: export may pass the routing settings positionally
        tensors = ("x", "router_logits", "w_gate_up", "w_down", "b_gate_up", "b_down", "e_score_correction_bias")
        args = tuple(a[k] for k in tensors)
        kwargs = {k: v for k, v in a.items() if k not in tensors}
        kwargs["expert_start"] = group.extra["expert_start"]
        with graph.inserting_before(moe):
            node = graph.call_function(ops.moe_ep.default, args, kwargs)  # this rank's experts' share
        node.meta.update({k: v for k, v in moe.meta.items() if k in ("nn_module_stack", "stack_trace", "val")})
        moe.replace_all_uses_with(node)
        graph.erase_node(moe)
    with graph.inserting_after(node):
        reduced = graph.call_function(ops.all_reduce.default, (node,))
    node.replace_all_uses_with(reduced, delete_user_cb=lambda u: u is not reduced)
    reduced.meta.update({k: v for k, v in node.meta.items() if k in ("nn_module_stack", "stack_trace")})
