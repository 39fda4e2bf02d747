"""Applying a sharding plan: local parameters, local shape constants, collectives.

    region (attention / mlp):   y = linear(x_l, W_row_l)  ->  all_reduce(y) (+ bias, once, after)
                                view(q, [b, s, 32, 128])   ->  view(q, [b, s, 16, 128])
    embedding:                  e = embedding(W, ids)      ->  ids_l = ids - start; out = ids_l outside [0, V_l)
                                                               e = all_reduce(embedding(W_l, ids_l | 0) masked to 0)
    lm_head:                    logits = linear(h, W)      ->  all_gather(linear(h, W_l), -1)
    two sums added:             all_reduce(a) + all_reduce(b) ->  all_reduce(a + b)   (merge_reductions)

Parameters become meta tensors of their local shape (or, in a graph that already holds real
weights, their slice) and the graph's WeightPlan gets a producer that reads only the rank's
slice: `fetch(name, index=…)` reads a part of a checkpoint tensor, lazily from safetensors.
"""

from __future__ import annotations

import torch
from torch import fx, nn

import autodeploy.distributed.collectives  # noqa: F401  (registers the collective ops)
from autodeploy.distributed.plan import ParamShard, ShardGroup, ShardPlan, Slice
from autodeploy.distributed.dims import NEW, SPLITS, VIEWS, Unsupported, split_dim, split_sizes
from autodeploy.graph import aten, is_op, val
from autodeploy.models.weights import checkpoint_name, weight_plan

ops = torch.ops.autodeploy


# ---- parameters ----------------------------------------------------------------------------------
def _take(t: torch.Tensor, s: ParamShard) -> torch.Tensor:
    if s.zeros:
        return torch.zeros_like(t)
    parts = [t[idx] for idx in s.slice.read_indices(t.dim())]
    return (parts[0] if len(parts) == 1 else torch.cat(parts, dim=s.slice.dim)).contiguous()


def localize_param(gm: fx.GraphModule, s: ParamShard) -> None:
    """Replace the parameter by its local part and record how to load that part."""
    mod_path, _, leaf = s.param.rpartition(".")
    owner = gm.get_submodule(mod_path) if mod_path else gm
    p = owner._parameters[leaf]
    if p.is_meta:
        shape = list(p.shape)
        if s.slice is not None and not s.zeros:
            shape[s.slice.dim] = s.slice.local
        new = torch.empty(shape, dtype=p.dtype, device="meta")
    else:  # a graph exported with its weights (tests): slice them now
        new = _take(p.detach(), s)
    owner.register_parameter(leaf, nn.Parameter(new, requires_grad=False))
    plan = weight_plan(gm)
    prior = plan.rules.pop(s.param, None)  # a rule set before sharding (a pre-quantized layout) runs first
    name = checkpoint_name(s.param)

    def produce(fetch, s=s, prior=prior, name=name):
        if prior is not None:
            return _take(prior(fetch), s)
        if s.zeros:
            return torch.zeros_like(fetch(name))
        parts = [fetch(name, index=idx) for idx in s.slice.read_indices(len(p.shape))]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=s.slice.dim)

    plan.set(s.param, produce)


# ---- shape constants -----------------------------------------------------------------------------
def _local_size(args: list, dim: int, sl: Slice, what: str) -> list:
    out = list(args)
    v = out[dim]
    if isinstance(v, int) and v == -1:
        return out
    if not isinstance(v, int) or v != sl.size:
        raise Unsupported(f"{what}: size {v} on the split dim is not the global {sl.size}")
    out[dim] = sl.local
    return out


def local_args(node: fx.Node, slices: dict[fx.Node, Slice]) -> tuple | None:
    """The node's args with global sizes of the split dim made local; None when nothing changes."""
    sl = slices.get(node)
    if sl is not None and is_op(node, VIEWS + (aten.expand,)):
        shape = list(node.args[1])
        if is_op(node, aten.expand):
            x = val(node.args[0])
            d = sl.dim - (len(shape) - x.dim())
            if d >= 0 and x.shape[d] != 1:
                return None  # expands a held input: -1 or the local size already
        new = _local_size(shape, sl.dim, sl, node.name)
        return None if new == shape else (node.args[0], new, *node.args[2:])
    if sl is not None and is_op(node, NEW):
        new = _local_size(list(node.args[1]), sl.dim, sl, node.name)
        return (node.args[0], new, *node.args[2:])
    if sl is not None and is_op(node, aten.slice):
        x_sl = slices.get(node.args[0])
        n = val(node).dim()
        dim = node.args[1] % n
        if x_sl is None or dim != x_sl.dim:
            return None
        start = int(node.args[2] or 0) if len(node.args) > 2 else 0
        end = min(int(node.args[3]) if len(node.args) > 3 and node.args[3] is not None else x_sl.size, x_sl.size)
        return (node.args[0], node.args[1], x_sl.local_index(start), x_sl.local_index(end), *node.args[4:])
    if is_op(node, SPLITS):
        x_sl = slices.get(node.args[0])
        if x_sl is None or split_dim(node) != x_sl.dim:
            return None
        sizes, out, off = split_sizes(node), [], 0
        for size in sizes:
            out.append(x_sl.within(off, off + size).local)
            off += size
        return (node.args[0], out, x_sl.dim)
    return None


def region_rewrites(group: ShardGroup) -> dict[fx.Node, tuple]:
    """Every constant rewrite the group needs (raises Unsupported when one is impossible)."""
    nodes = set(group.node_slices)
    for n in list(nodes):
        nodes.update(u for u in n.users if is_op(u, SPLITS))
    out = {}
    for node in nodes:
        if node.op == "call_function":
            args = local_args(node, group.node_slices)
            if args is not None:
                out[node] = args
    return out


def _rewrite_region(gm: fx.GraphModule, group: ShardGroup) -> int:
    graph = gm.graph
    for node, args in region_rewrites(group).items():
        if is_op(node, SPLITS):
            node.target = aten.split_with_sizes.default
        node.args = args
    for lin in group.rows:
        x, w = lin.args[:2]
        bias = lin.args[2] if len(lin.args) > 2 else None
        with graph.inserting_after(lin):
            reduced = graph.call_function(ops.all_reduce.default, (lin,))
        lin.replace_all_uses_with(reduced, delete_user_cb=lambda u, r=reduced: u is not r)
        _copy_meta(lin, reduced)
        if bias is not None:  # added once, after the sum (every rank adding it would count it W times)
            lin.args = (x, w)
            with graph.inserting_after(reduced):
                biased = graph.call_function(aten.add.Tensor, (reduced, bias))
            reduced.replace_all_uses_with(biased, delete_user_cb=lambda u, b=biased: u is not b)
            _copy_meta(lin, biased)
    return len(group.rows)


def _copy_meta(src: fx.Node, dst: fx.Node) -> None:
    for key in ("nn_module_stack", "stack_trace"):
        if key in src.meta:
            dst.meta[key] = src.meta[key]


def _vocab_embedding(gm: fx.GraphModule, group: ShardGroup) -> None:
    """Each rank looks up the ids in its vocabulary rows; other ids read row 0 and are zeroed."""
    emb = group.anchor
    graph = gm.graph
    weight, ids = emb.args[:2]
    start, end = group.params[weight.target].slice.ranges[0]
    with graph.inserting_before(emb):
        local = graph.call_function(aten.sub.Scalar, (ids, start))  # [b, s]
        below = graph.call_function(aten.lt.Scalar, (local, 0))
        above = graph.call_function(aten.ge.Scalar, (local, end - start))
        outside = graph.call_function(aten.logical_or.default, (below, above))  # [b, s] bool
        safe = graph.call_function(aten.masked_fill.Scalar, (local, outside, 0))
        rows = graph.call_function(aten.embedding.default, (weight, safe))  # [b, s, h]
        mask = graph.call_function(aten.unsqueeze.default, (outside, -1))  # [b, s, 1]
        mine = graph.call_function(aten.masked_fill.Scalar, (rows, mask, 0.0))
        out = graph.call_function(ops.all_reduce.default, (mine,))  # each row comes from one rank
    _copy_meta(emb, out)
    emb.replace_all_uses_with(out)
    graph.erase_node(emb)


def _gather_logits(gm: fx.GraphModule, group: ShardGroup, world: int) -> None:
    lin = group.anchor
    with gm.graph.inserting_after(lin):
        gathered = gm.graph.call_function(ops.all_gather.default, (lin, -1, world))  # [.., V]
    lin.replace_all_uses_with(gathered, delete_user_cb=lambda u: u is not gathered)
    _copy_meta(lin, gathered)


def apply_plan(gm: fx.GraphModule, plan: ShardPlan, groups: list[ShardGroup] | None = None) -> dict[str, int]:
    """Rewrite the graph for `plan.rank` (the given groups, default all); returns what was inserted."""
    counts = {"all_reduce": 0, "all_gather": 0, "params_sliced": 0}
    for group in plan.groups if groups is None else groups:
        for shard in group.params.values():
            localize_param(gm, shard)
            counts["params_sliced"] += 1
        if group.kind == "embedding":
            _vocab_embedding(gm, group)
            counts["all_reduce"] += 1
        elif group.kind == "lm_head":
            _gather_logits(gm, group, plan.world_size)
            counts["all_gather"] += 1
        elif group.kind != "experts":
            counts["all_reduce"] += _rewrite_region(gm, group)
    return counts



def _reduced(node) -> tuple[fx.Node, list[fx.Node]] | None:
    """(the all_reduce, the views after it) when `node` is an all_reduce seen through single-use views."""
    chain = []
    while isinstance(node, fx.Node) and is_op(node, VIEWS) and len(node.users) == 1:
        chain.append(node)
        node = node.args[0]
    if isinstance(node, fx.Node) and is_op(node, ops.all_reduce) and len(node.users) == 1:
        return node, chain
    return None


def merge_reductions(gm: fx.GraphModule) -> int:
    """add(all_reduce(a), all_reduce(b)) -> all_reduce(add(a, b)): one collective instead of two
    (an MoE block's routed experts and its shared expert). Views between commute with the sum."""
    merged = 0
    for add in list(gm.graph.nodes):
        if not is_op(add, aten.add.Tensor) or add.kwargs or len(add.args) != 2:
            continue
        a, b = (_reduced(x) for x in add.args)
        if a is None or b is None or a[0] is b[0]:
            continue
        for reduce, _ in (a, b):
            reduce.replace_all_uses_with(reduce.args[0])
            gm.graph.erase_node(reduce)
        with gm.graph.inserting_after(add):
            total = gm.graph.call_function(ops.all_reduce.default, (add,))
        add.replace_all_uses_with(total, delete_user_cb=lambda u, t=total: u is not t)
        _copy_meta(add, total)
        merged += 1
    return merged
