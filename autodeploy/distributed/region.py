"""Sharded regions: from an anchor (attention heads, a gated MLP's hidden units) to the linears around it.

A region is the set of graph tensors each rank holds only a slice of. The solver starts from an
anchor's slices and spreads them with one rule per op, in both directions, until every path ends:

    backward, at a linear's output          -> column split (weight rows), the region's opening
    backward, at a parameter                -> that parameter is sliced (attention sinks)
    forward, into a linear's input (last)   -> row split (weight columns) + all_reduce, its closing
    a broadcast input (size 1 on the dim)   -> stays whole (DeepSeek's shared rope key: its expand
                                               is rewritten to the local head count)

    x ─ q_proj ─ view [b,s,n,d] ─ rope ─┐                     column: q_proj, k_proj, v_proj
    x ─ k_proj ─ view ─────────── rope ─┼─ attention ─ reshape ─ o_proj   row: o_proj
    x ─ v_proj ─ view ──────────────────┘   [b,s,n_l,d]

Every op the region touches needs a rule (views map the slice through their dim groups; a split
on the sharded dim hands each output its part); any other op raises `Unsupported`, and the caller
leaves the region whole. Nodes whose constant arguments hold a global size (a view to
[b, s, 32, 128], an expand to 4 heads, split sizes) are rewritten from the slices recorded here.
"""

from __future__ import annotations

import operator
from collections import deque
from dataclasses import dataclass, field

import torch
from torch import fx

from autodeploy.distributed.dims import (BINARY, NEW, PASS, SPLITS, VIEWS, Unsupported, aligned, ndim, norm_dim,
                                         perm, shape, split_dim, split_sizes, view_map)
from autodeploy.distributed.plan import Slice
from autodeploy.graph import aten, is_op, val

ops = torch.ops.autodeploy


@dataclass
class Region:
    """What the solver found: tensors with their slices, and the linears / parameters at the edges."""

    slices: dict[fx.Node, Slice] = field(default_factory=dict)
    columns: dict[fx.Node, Slice] = field(default_factory=dict)  # linear -> slice of its output (last dim)
    rows: dict[fx.Node, Slice] = field(default_factory=dict)  # linear -> slice of its input (last dim)
    params: dict[str, Slice] = field(default_factory=dict)  # get_attr target -> slice of the parameter
    visited: set[fx.Node] = field(default_factory=set)  # every node inside, edges included
    anchors: set[fx.Node] = field(default_factory=set)


class Solver:
    """Spreads slices from anchors; `solve()` returns the Region or raises Unsupported."""

    def __init__(self) -> None:
        self.r = Region()
        self.queue: deque[fx.Node] = deque()
        self.partial: set[fx.Node] = set()  # held as a union of parts its split users select from

    # ---- bookkeeping ---------------------------------------------------------------------------
    def hold(self, node: fx.Node, sl: Slice, partial: bool = False) -> None:
        """`node`'s output is held as `sl` on this rank."""
        if not isinstance(node, fx.Node) or sl.is_full():
            return  # every rank holds all of it (a replicated KV head): not part of the region
        old = self.r.slices.get(node)
        if old == sl:
            return
        if old is not None:
            if not (partial and node in self.partial) or old.dim != sl.dim:
                raise Unsupported(f"{node.name}: held as {old.ranges} on dim {old.dim} and as {sl.ranges} on dim {sl.dim}")
            sl = old.union(sl)
        if partial:
            self.partial.add(node)
        self.r.slices[node] = sl
        self.r.visited.add(node)
        self.queue.append(node)

    def anchor(self, node: fx.Node, out: Slice | None, inputs: dict[fx.Node, Slice]) -> None:
        """An op whose slices the caller knows (attention: heads of q, k, v and of its output)."""
        self.r.anchors.add(node)
        self.r.visited.add(node)
        for n, sl in inputs.items():
            self.hold(n, sl)
        if out is not None:
            self.r.slices[node] = out
            self.queue.append(node)

    def solve(self) -> Region:
        while self.queue:
            node = self.queue.popleft()
            if node not in self.r.anchors:
                self.backward(node)
            self.forward(node)
        return self.r

    # ---- backward: which slice of each input gives this node's slice ----------------------------
    def backward(self, node: fx.Node) -> None:
        sl = self.r.slices[node]
        if node.op == "get_attr":
            self.r.params[node.target] = sl
            return
        if node.op != "call_function":
            raise Unsupported(f"{node.name} ({node.op}) would need to be split")
        if node in self.r.rows:
            raise Unsupported(f"{node.name}: a linear with both its input and its output split")
        if is_op(node, aten.linear):
            if sl.dim != ndim(node) - 1:
                raise Unsupported(f"{node.name}: linear split on a leading dim")
            self.r.columns[node] = sl
            for p in node.args[1:3]:  # a fused GEMM's rows may still grow by another part: so may these
                if isinstance(p, fx.Node):
                    self.hold(p, sl.with_dim(0), partial=node in self.partial)
            return
        # a split's part or a slice selects from its input: the input may hold the union of parts
        selector = node.target is operator.getitem or is_op(node, aten.slice)
        for inp, in_sl in self.inputs_for(node, sl).items():
            self.hold(inp, in_sl, partial=selector)

    def inputs_for(self, node: fx.Node, sl: Slice) -> dict[fx.Node, Slice]:
        """The slice each tensor input must hold for `node` to hold `sl` (the backward rules)."""
        n = ndim(node)
        x = node.args[0] if node.args else None
        if is_op(node, PASS) or is_op(node, (ops.gated_mlp_act,)):
            ins = [a for a in node.args if isinstance(a, fx.Node)] if is_op(node, ops.gated_mlp_act) else [x]
            return {a: sl for a in ins}
        if is_op(node, ops.rmsnorm):
            if sl.dim == n - 1:
                raise Unsupported(f"{node.name}: RMSNorm over the split dim")
            return {x: sl}
        if is_op(node, BINARY):
            out = {}
            for a in node.args[:2]:
                d = aligned(a, n, sl.dim)
                if d is not None:
                    out[a] = sl.with_dim(d)
            return out
        if is_op(node, VIEWS):
            mapped = view_map(shape(node), shape(x), sl)
            if mapped is None:
                raise Unsupported(f"{node.name}: a view that scatters the split dim")
            return {x: mapped}
        order = perm(node)
        if order is not None:
            return {x: sl.with_dim(order[sl.dim])}
        if is_op(node, aten.unsqueeze):
            d = norm_dim(node.args[1], n)
            if d == sl.dim:
                raise Unsupported(f"{node.name}: unsqueeze on the split dim")
            return {x: sl.with_dim(sl.dim - (d < sl.dim))}
        if is_op(node, aten.expand):
            d = aligned(x, n, sl.dim)
            return {} if d is None else {x: sl.with_dim(d)}  # size 1: broadcast, rewritten to local
        if is_op(node, aten.slice):
            dim = norm_dim(node.args[1] if len(node.args) > 1 else 0, n)
            if dim != sl.dim:
                return {x: sl}
            if (node.args[4] if len(node.args) > 4 else 1) != 1:
                raise Unsupported(f"{node.name}: strided slice of the split dim")
            start = int(node.args[2] or 0) if len(node.args) > 2 else 0
            return {x: sl.shifted(start, int(shape(x)[dim]))}
        if is_op(node, aten.cat):
            dim = norm_dim(node.args[1] if len(node.args) > 1 else 0, n)
            if dim == sl.dim:
                raise Unsupported(f"{node.name}: concatenation along the split dim")
            return {a: sl.with_dim(sl.dim - (n - ndim(a))) for a in node.args[0]}
        if is_op(node, aten.copy_):
            return {node.args[0]: sl, **({node.args[1]: sl} if aligned(node.args[1], n, sl.dim) is not None else {})}
        if is_op(node, NEW):
            self.fill_new(node, sl)
            return {}
        if node.target is operator.getitem:
            return self.getitem_inputs(node, sl)
        raise Unsupported(f"{node.name}: no sharding rule for {node.target}")

    def getitem_inputs(self, node: fx.Node, sl: Slice) -> dict[fx.Node, Slice]:
        src, i = node.args
        self.r.visited.add(src)
        if is_op(src, ops.rope):
            return {src.args[i]: sl}
        if is_op(src, SPLITS):
            x, dim = src.args[0], split_dim(src)
            if dim != sl.dim:
                return {x: sl}
            sizes = split_sizes(src)
            return {x: sl.shifted(sum(sizes[:i]), int(shape(x)[dim]))}
        raise Unsupported(f"{node.name}: no sharding rule for an output of {src.target}")

    def fill_new(self, node: fx.Node, sl: Slice) -> None:
        """A fresh tensor (new_empty) filled through in-place copies into its slices (DeepSeek's k):
        each slice view holds the same slice, and each copy's source must hold it too."""
        for view in node.users:
            if is_op(view, aten.slice) and norm_dim(view.args[1], ndim(node)) != sl.dim:
                self.hold(view, sl)

    # ---- forward: what each user of a held node holds ------------------------------------------
    def forward(self, node: fx.Node) -> None:
        sl = self.r.slices[node]
        if node.op == "get_attr":
            return  # parameters: their users are the linears that asked for them
        for user in list(node.users):
            if user in self.r.anchors:
                continue
            if is_op(user, aten.sym_size) and norm_dim(user.args[1], ndim(node)) != sl.dim:
                self.r.visited.add(user)  # a size of an unsplit dim: the same on every rank
                continue
            if is_op(user, aten.linear):
                if user.args[0] is not node:
                    raise Unsupported(f"{user.name}: a split tensor used as a weight")
                if sl.dim != ndim(node) - 1:
                    raise Unsupported(f"{user.name}: linear over a split leading dim")
                if user in self.r.columns:
                    raise Unsupported(f"{user.name}: a linear with both its input and its output split")
                self.r.rows[user] = sl
                self.r.visited.add(user)
                continue
            if is_op(user, SPLITS) or is_op(user, ops.rope):
                self.forward_multi(user)
                continue
            out = self.output_of(user, node, sl)
            self.hold(user, out)

    def forward_multi(self, node: fx.Node) -> None:
        """A split or rope: each getitem holds its part (rope: the slice of its own input)."""
        self.r.visited.add(node)
        for item in node.users:
            if item.target is not operator.getitem:
                raise Unsupported(f"{node.name}: multi-output op used whole")
            i = item.args[1]
            if is_op(node, ops.rope):
                if node.args[i] in self.r.slices:
                    self.hold(item, self.r.slices[node.args[i]])
                continue
            x, dim = node.args[0], split_dim(node)
            sl = self.r.slices[x]
            if dim != sl.dim:
                self.hold(item, sl)
                continue
            sizes = split_sizes(node)
            start = sum(sizes[:i])
            part = sl.within(start, start + sizes[i]).with_dim(dim)
            if not part.ranges:
                raise Unsupported(f"{item.name}: a split part this rank holds nothing of")
            self.hold(item, part)

    def output_of(self, user: fx.Node, node: fx.Node, sl: Slice) -> Slice:
        """The forward rules: the slice `user` holds when its input `node` holds `sl`."""
        if not isinstance(val(user), torch.Tensor):
            raise Unsupported(f"{user.name}: no sharding rule for {user.target} (several outputs)")
        n = ndim(user)
        if is_op(user, PASS) or is_op(user, (ops.rmsnorm, ops.gated_mlp_act)):
            if is_op(user, ops.rmsnorm) and sl.dim == n - 1:
                raise Unsupported(f"{user.name}: RMSNorm over the split dim")
            return sl
        if is_op(user, BINARY) or is_op(user, aten.copy_):
            return sl.with_dim(sl.dim + (n - ndim(node)))
        if is_op(user, VIEWS):
            mapped = view_map(shape(node), shape(user), sl)
            if mapped is None:
                raise Unsupported(f"{user.name}: a view that scatters the split dim")
            return mapped
        order = perm(user)
        if order is not None:
            return sl.with_dim(order.index(sl.dim))
        if is_op(user, aten.unsqueeze):
            d = norm_dim(user.args[1], n)
            return sl.with_dim(sl.dim + (d <= sl.dim))
        if is_op(user, aten.slice):
            if norm_dim(user.args[1], n) != sl.dim:
                return sl
            if (user.args[4] if len(user.args) > 4 else 1) != 1:
                raise Unsupported(f"{user.name}: strided slice of the split dim")
            start = int(user.args[2] or 0) if len(user.args) > 2 else 0
            end = min(int(user.args[3]) if len(user.args) > 3 and user.args[3] is not None else sl.size, sl.size)
            part = sl.within(start, end)
            if not part.ranges:
                raise Unsupported(f"{user.name}: a slice this rank holds nothing of")
            return part
        if is_op(user, aten.cat) and norm_dim(user.args[1] if len(user.args) > 1 else 0, n) != sl.dim:
            return sl  # the other inputs must hold the same slice: the backward rule asks them
        if is_op(user, NEW) and user.args[0] is node:
            size = user.args[1]
            if isinstance(size[sl.dim], int) and size[sl.dim] == sl.size:
                return sl  # a fresh tensor of the same global shape: held the same way
        raise Unsupported(f"{user.name}: no sharding rule for {user.target}")


def static_size(node: fx.Node, dim: int) -> int | None:
    d = shape(node)[dim]
    return None if isinstance(d, torch.SymInt) else int(d)


def even_slice(node: fx.Node, dim: int, world: int, rank: int) -> Slice:
    size = static_size(node, dim)
    if size is None or size % world:
        raise Unsupported(f"{node.name}: dim {dim} of size {size} does not split over {world} ranks")
    return Slice.even(dim, size, world, rank)

