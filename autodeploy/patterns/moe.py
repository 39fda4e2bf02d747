"""Detection of transformers' MoE blocks in an exported graph (the rewrite is transforms/match_moe.py).

The expert loop is variable-arity structure, so this is a hand-written node walk (is_op checks, no
names). It anchors on the two expert GEMMs of a block, then reads everything else off the graph:

  batched_mm (CPU recipe)                          grouped_mm (GPU recipes)
  xr = repeat_interleave(x, k, 0)                  ids_s, perm = sort(ids.reshape(-1))
  gu = bmm(W_gu[ids], xr[..., None])               xs = x[perm // k];  offs = cumsum(histc(ids_s))
       (GPT-OSS: bmm(xr[:, None], W_gu[ids]))      gu = grouped_mm(xs, W_gu^T, offs)
  [+ b_gu[ids]] ─ gate/up split ─ act ─ h          [+ b_gu[ids_s]] ─ gate/up split ─ act ─ h
  y  = bmm(W_d[ids], h[..., None])  [+ b_d[ids]]   y = grouped_mm(h, W_d^T, offs)  [+ b_d[ids_s]]
  o  = y * w.reshape(-1)[:, None]                  o = (y * w.reshape(-1)[perm][:, None])[inv_perm]
  out = o.view(t, k, h).sum(1)                     out = o.view(t, k, h).sum(1)

and then the router that produced (w [t, k], ids [t, k]) from the router logits (moe_router.py).

transformers 5.17 (the GPU image) adds no-op guards for expert-parallel sentinel ids: the ids are
clamped into [0, E - 1] and, on the grouped path, GEMM inputs and outputs are masked where
`sorted_ids >= E`; the walk steps over them. The two GEMMs of a block are paired by the routing
ids they share.

`find_moe_blocks(gm)` returns one MoeMatch per recognized block, and the reasons for expert GEMMs
whose block it could not read (so the transform can warn instead of guessing).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx

from autodeploy.graph import aten, is_op, val
from autodeploy.patterns.moe_router import read_router
from autodeploy.patterns.walk import (ADDS, CASTS, RESHAPES, NoMatch, getitem_of, is_param, last_dim, need, only_user,
                                      peel, scalar_arg)


@dataclass
class MoeMatch:
    out: fx.Node  # [t, h]: the block's routed output, replaced by the moe op
    x: fx.Node  # [t, h]: tokens entering the experts
    router_logits: fx.Node  # [t, E]
    w_gate_up: fx.Node  # get_attr, stored [E, 2f, h] or (transposed) [E, h, 2f]
    w_down: fx.Node  # get_attr, stored [E, h, f] or (transposed) [E, f, h]
    transposed: bool
    b_gate_up: fx.Node | None
    b_down: fx.Node | None
    score_bias: fx.Node | None  # DeepSeek-V3 e_score_correction_bias [E]
    config: dict[str, Any] = field(default_factory=dict)  # the moe op's routing + activation kwargs
    path: str = "batched_mm"  # or grouped_mm
    inputs: set[fx.Node] = field(default_factory=set)  # where the block's region stops


# ---- expert GEMMs ---------------------------------------------------------------------------


def grouped_mm_ops() -> tuple:
    ops = [aten._grouped_mm] if hasattr(aten, "_grouped_mm") else []
    try:  # transformers' fallback op exists once transformers.integrations.moe is imported
        ops.append(torch.ops.transformers.grouped_mm_fallback)
    except (AttributeError, RuntimeError):
        pass
    return tuple(ops)


@dataclass
class _Gemm:
    node: fx.Node
    act_in: fx.Node  # the activation fed to the expert GEMM (casts peeled)
    weight: fx.Node  # get_attr of the 3-D expert weight
    transposed: bool  # weight stored [E, in, out]
    ids: fx.Node  # batched: the flat expert ids; grouped: the sort node
    out: fx.Node  # the GEMM result as [S, out] (after the squeeze of the bmm path)


def _is_sentinel_mask(node: fx.Node) -> bool:
    """masked_fill(t, (ids >= E)[:, None], 0): transformers' expert-parallel sentinel rows (none without EP)."""
    if not is_op(node, (aten.masked_fill.Scalar, aten.masked_fill_.Scalar)) or node.args[2] != 0:
        return False
    mask = peel(node.args[1], (aten.unsqueeze,))
    return is_op(mask, aten.ge.Scalar)


def _skip_sentinel(node: fx.Node) -> fx.Node:
    """Step over the sentinel masks applied to a GEMM result (transformers 5.17's grouped_mm path)."""
    while True:
        users = [u for u in node.users if not is_op(u, aten._assert_tensor_metadata)]
        if len(users) == 1 and _is_sentinel_mask(users[0]) and users[0].args[0] is node:
            node = users[0]
        else:
            return node


def _peel_input(node) -> fx.Node:
    """The activation fed to an expert GEMM, past casts and sentinel pre-masks."""
    while isinstance(node, fx.Node) and (is_op(node, CASTS) or _is_sentinel_mask(node)):
        node = node.args[0]
    return node


def _same_ids(a, b) -> bool:
    """Expert ids equal up to transformers' in-range clamp (ids.clamp(0, E - 1): a no-op for router ids)."""
    clamps = (aten.clamp, aten.clamp_)
    return peel(a, clamps) is peel(b, clamps)


def _batched_gemm(node: fx.Node) -> _Gemm:
    a, b = node.args[:2]
    if is_op(a, aten.index.Tensor) and is_param(a.args[0], 3):  # W[ids] @ x[..., None]
        gathered, vec, squeeze_dim, transposed = a, b, -1, False
    elif is_op(b, aten.index.Tensor) and is_param(b.args[0], 3):  # x[:, None] @ W[ids]
        gathered, vec, squeeze_dim, transposed = b, a, 1, True
    else:
        raise NoMatch(f"{node}: bmm without an expert-weight gather")
    need(is_op(vec, aten.unsqueeze) and len(gathered.args[1]) == 1, f"{node}: unexpected bmm operands")
    squeeze = only_user(node, aten.squeeze)
    need(squeeze.args[1] in (squeeze_dim, 2 if squeeze_dim == -1 else squeeze_dim), f"{squeeze}: unexpected squeeze dim")
    return _Gemm(node, _peel_input(vec.args[0]), gathered.args[0], transposed, gathered.args[1][0], squeeze)


def _grouped_gemm(node: fx.Node) -> _Gemm:
    act, weight, offs = node.args[:3]
    transposed = True
    if is_op(weight, aten.transpose):
        need(sorted(d % 3 for d in weight.args[1:3]) == [1, 2], f"{weight}: unexpected transpose")
        weight, transposed = weight.args[0], False
    need(is_param(weight, 3), f"{node}: weight is not a 3-D parameter")
    # offs = cumsum(histc(sorted ids)): walk back to the sort that ordered the pairs by expert
    cur = peel(offs, CASTS + (aten.cumsum, aten.histc))
    sort = getitem_of(cur, 0, (aten.sort,))
    return _Gemm(node, _peel_input(act), weight, transposed, sort, node)


def expert_gemm(node: fx.Node) -> _Gemm | None:
    """The expert GEMM view of `node`, or None when it is not a bmm / grouped_mm over expert weights."""
    if is_op(node, aten.bmm):
        if not any(is_op(a, aten.index.Tensor) and is_param(a.args[0], 3) for a in node.args[:2]):
            return None
        return _batched_gemm(node)
    if grouped_mm_ops() and is_op(node, grouped_mm_ops()):
        return _grouped_gemm(node)
    return None


def _bias_after(out: fx.Node, ids: fx.Node) -> tuple[fx.Node, fx.Node | None]:
    """out [+ B[ids]] -> (the biased node, B)."""
    users = [u for u in out.users if not is_op(u, aten._assert_tensor_metadata)]
    if len(users) == 1 and is_op(users[0], ADDS):
        add = users[0]
        other = add.args[1] if add.args[0] is out else add.args[0]
        if is_op(other, aten.index.Tensor) and is_param(other.args[0], 2) and _same_ids(other.args[1][0], ids):
            return add, other.args[0]
    return out, None


# ---- gate / up split and activation ----------------------------------------------------------


def _split_halves(gu: fx.Node, gate: fx.Node, up: fx.Node) -> bool:
    """gate, up = the two halves of gu (chunk / split), or interleaved (0::2, 1::2) -> interleaved."""
    g_src, u_src = peel(gate, CASTS), peel(up, CASTS)
    if is_op(g_src, aten.slice.Tensor) and is_op(u_src, aten.slice.Tensor):
        need(g_src.args[0] is gu and u_src.args[0] is gu, "gate/up slices not of the gate_up GEMM")
        g, u = list(g_src.args[1:]) + [None] * 4, list(u_src.args[1:]) + [None] * 4
        need(last_dim(gu, g[0]) and last_dim(gu, u[0]), "gate/up slices not on the last dim")
        need(g[1] == 0 and u[1] == 1 and g[3] == 2 and u[3] == 2, "gate/up slices are not 0::2 / 1::2")
        return True
    chunk = getitem_of(g_src, 0, (aten.chunk, aten.split.Tensor))
    need(getitem_of(u_src, 1, (aten.chunk, aten.split.Tensor)) is chunk and chunk.args[0] is gu, "gate/up not one split")
    dim = chunk.args[2] if len(chunk.args) > 2 else 0
    need(last_dim(gu, dim), "gate/up split not on the last dim")
    if is_op(chunk, aten.chunk):
        need(chunk.args[1] == 2, "gate_up chunked into more than two")
    else:
        need(2 * chunk.args[1] == val(gu).shape[-1], "gate_up split into unequal parts")
    return False


def _mul_operands(node: fx.Node) -> tuple:
    need(is_op(node, aten.mul.Tensor) and all(isinstance(a, fx.Node) for a in node.args[:2]), f"{node}: not a product")
    return node.args[0], node.args[1]


def _activation(gu: fx.Node, hidden: fx.Node) -> dict[str, Any]:
    """Read act(gate, up) between the gate_up GEMM output `gu` and the down GEMM input `hidden`."""
    a, b = _mul_operands(hidden)
    for act_node, up in ((a, b), (b, a)):
        if is_op(act_node, aten.silu):
            return dict(act="silu", interleaved_gate_up=_split_halves(gu, act_node.args[0], up))
        if is_op(act_node, aten.gelu):
            approx = act_node.kwargs.get("approximate", act_node.args[1] if len(act_node.args) > 1 else "none")
            return dict(act="gelu_tanh" if approx == "tanh" else "gelu",
                        interleaved_gate_up=_split_halves(gu, act_node.args[0], up))
    # GPT-OSS:  (clamp(up, -L, L) + 1) * (g * sigmoid(g * alpha)),  g = clamp(gate, max=L)
    for plus_one, glu in ((a, b), (b, a)):
        if is_op(plus_one, ADDS) and plus_one.args[1] == 1 and is_op(plus_one.args[0], aten.clamp):
            up_clamp = plus_one.args[0]
            g, sig = _mul_operands(glu)
            if is_op(g, aten.sigmoid):
                g, sig = sig, g
            need(is_op(sig, aten.sigmoid) and is_op(g, aten.clamp), "clamped swiglu: no sigmoid gate")
            g_scaled, alpha = scalar_arg(sig.args[0]) or (None, None)
            need(g_scaled is g, "clamped swiglu: sigmoid not of alpha * gate")
            limit = up_clamp.args[2]
            need(g.args[1] is None and g.args[2] == limit and up_clamp.args[1] == -limit, "clamped swiglu: limits differ")
            interleaved = _split_halves(gu, g.args[0], up_clamp.args[0])
            return dict(act="swiglu_clamped", interleaved_gate_up=interleaved, swiglu_alpha=alpha, swiglu_limit=float(limit))
    raise NoMatch(f"{hidden}: unknown expert activation")


# ---- whole block ----------------------------------------------------------------------------


def _weighted_sum(y: fx.Node, perm: fx.Node | None) -> tuple[fx.Node, fx.Node]:
    """y [S, h] -> (out [t, h], routing weights [t, k]): the weighting, un-permute and per-token sum."""
    mul = only_user(y, aten.mul.Tensor)
    wcol = mul.args[1] if mul.args[0] is y else mul.args[0]
    need(is_op(wcol, aten.unsqueeze) and wcol.args[1] in (-1, 1), f"{mul}: weights not a column")
    wflat = wcol.args[0]
    node = mul
    if perm is not None:  # weights were permuted along with the pairs, the product is un-permuted
        need(is_op(wflat, aten.index.Tensor) and wflat.args[1][0] is perm, f"{wflat}: weights not sorted by expert")
        wflat = wflat.args[0]
        node = only_user(mul, aten.index.Tensor)
        inv = node.args[1][0]
        need(is_op(inv, (aten.index_put_, aten.index_put)) and inv.args[1][0] is perm, f"{node}: order not restored")
    need(is_op(wflat, RESHAPES), f"{wflat}: weights not flattened from [t, k]")
    view = only_user(node, RESHAPES)
    out = only_user(view, aten.sum.dim_IntList)
    need(list(out.args[1]) == [1] and val(view).dim() == 3, f"{out}: not the sum over the k experts")
    users = [u for u in out.users if not is_op(u, aten._assert_tensor_metadata)]
    if len(users) == 1 and is_op(users[0], CASTS):
        out = users[0]
    return out, wflat.args[0]


def read_block(up: _Gemm, down: _Gemm) -> MoeMatch:
    grouped = is_op(up.node, grouped_mm_ops()) if grouped_mm_ops() else False
    need(up.ids is down.ids and up.transposed == down.transposed, f"{down.node}: experts GEMMs disagree")
    bias_ids = _sorted_ids(up.ids) if grouped else up.ids  # bias rows are gathered per (sorted) pair
    gu, b_gu = _bias_after(up.out, bias_ids)
    gu = _skip_sentinel(gu)
    act = _activation(gu, down.act_in)
    y, b_d = _bias_after(down.out, bias_ids)
    y = _skip_sentinel(y)
    perm = None
    if grouped:
        sort = up.ids
        perm = next(u for u in sort.users if u.target is operator.getitem and u.args[1] == 1)
        x_sel = up.act_in
        need(is_op(x_sel, aten.index.Tensor), f"{x_sel}: tokens not gathered by the expert order")
        div = x_sel.args[1][0]
        need(is_op(div, aten.floor_divide) and div.args[0] is perm, f"{div}: not perm // k")
        x, k_rep = x_sel.args[0], div.args[1]
        flat_ids = sort.args[0]
    else:
        rep = up.act_in
        need(is_op(rep, aten.repeat_interleave.self_int) and rep.args[2] == 0, f"{rep}: tokens not repeated per slot")
        x, k_rep = rep.args[0], rep.args[1]
        flat_ids = up.ids
        if is_op(flat_ids, aten.clamp):  # transformers 5.17 clamps ids into [0, E - 1]: a no-op for router ids
            n_experts = val(up.weight).shape[0]
            need(flat_ids.args[1] in (0, None) and flat_ids.args[2] == n_experts - 1, f"{flat_ids}: ids clamped off range")
            flat_ids = flat_ids.args[0]
    out, weights = _weighted_sum(y, perm)
    need(is_op(flat_ids, RESHAPES), f"{flat_ids}: expert ids not flattened from [t, k]")
    logits, score_bias, routing = read_router(weights, flat_ids.args[0])
    need(routing["top_k"] == k_rep, f"{out}: top-k {routing['top_k']} but tokens repeated {k_rep} times")
    vx, vo = val(x), val(out)
    need(vx is not None and vo is not None and vo.dim() == 2 and vo.dtype == vx.dtype, f"{out}: output not [t, h] in x's dtype")
    inputs = {x, logits, up.weight, down.weight} | {n for n in (b_gu, b_d, score_bias) if n is not None}
    return MoeMatch(out, x, logits, up.weight, down.weight, up.transposed, b_gu, b_d, score_bias,
                    config=routing | act, path="grouped_mm" if grouped else "batched_mm", inputs=inputs)


def _sorted_ids(sort: fx.Node) -> fx.Node | None:
    return next((u for u in sort.users if u.target is operator.getitem and u.args[1] == 0), None)


def _ids_key(g: _Gemm) -> fx.Node:
    """What the two GEMMs of one block share: the flat expert ids (batched) or their sort (grouped)."""
    return peel(g.ids, (aten.clamp,))


def find_moe_blocks(gm: fx.GraphModule) -> tuple[list[MoeMatch], list[str]]:
    """Every MoE block of the graph: (matches, reasons the remaining expert GEMMs were left alone)."""
    by_ids: dict[fx.Node, list[_Gemm]] = {}
    reasons: list[str] = []
    for node in gm.graph.nodes:  # graph order: a block's up projection comes before its down
        try:
            g = expert_gemm(node)
        except NoMatch as e:
            reasons.append(str(e))
            continue
        if g is not None:
            by_ids.setdefault(_ids_key(g), []).append(g)
    matches = []
    for gemms in by_ids.values():
        try:
            need(len(gemms) == 2, f"{gemms[0].node}: {len(gemms)} expert GEMMs share one routing, expected up + down")
            matches.append(read_block(*gemms))
        except NoMatch as e:
            reasons.append(str(e))
    return matches, reasons


def block_region(match: MoeMatch) -> set[fx.Node]:
    """Nodes computed from the block's inputs on the way to its output: what the moe op replaces."""
    region, stack = set(), [match.out]
    while stack:
        node = stack.pop()
        if node in region or node in match.inputs or node.op != "call_function":
            continue
        if isinstance(val(node), (torch.SymInt, int, float, bool)):
            continue  # SymInt arithmetic is shared with the rest of the graph
        region.add(node)
        stack.extend(a for a in node.all_input_nodes)
    # In-place ops nobody reads (transformers 5.17's `sorted_ids.clamp_(max=E - 1)`) hang off the
    # region without being its ancestors; they go with it.
    for node in list(region):
        for user in node.users:
            if not user.users and _mutates(user) and user.args[0] is node:
                region.add(user)
    return region


def _mutates(node: fx.Node) -> bool:
    schema = getattr(node.target, "_schema", None)
    return schema is not None and schema.is_mutable


def mutation_escapes(region: set[fx.Node], out: fx.Node) -> fx.Node | None:
    """An in-place op of the region whose mutated tensor is also read outside the region, if any."""
    for node in region:
        if not _mutates(node) or not node.args or not isinstance(node.args[0], fx.Node):
            continue
        outside = [u for u in node.args[0].users if u not in region and not is_op(u, aten._assert_tensor_metadata)]
        if outside:
            return node
    return None
