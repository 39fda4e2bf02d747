"""Plan detection: which regions of the canonical graph split over the ranks, and how.

    autodeploy::attention   heads split: q / k / v column-split by head (KV heads replicated when
                            fewer than ranks), the output projection row-split + all_reduce
    autodeploy::gated_mlp_act   gate / up column-split, down row-split + all_reduce
    aten.embedding          vocab-parallel: each rank looks up its rows, all_reduce
    the lm_head linear      vocab column-split, all_gather of the logits

Styles from HF's `config.base_model_tp_plan` and, above it, the recipe's `tp_plan` override the
heuristic per module path (patterns like `layers.*.mlp.down_proj`): "replicate" keeps a region
whole; "colwise" on a linear no region covers starts one there (its closing linears found by the
same solver). A recipe entry the graph contradicts (row-splitting a linear that opens a region)
is an error; an HF entry that does is a note. Heads that cannot split — not divisible by the
ranks, and KV heads neither divisible nor evenly replicable — raise ShardingError before any
weight loads.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import fx

from autodeploy.distributed.dims import Unsupported
from autodeploy.distributed.plan import ParamShard, ShardGroup, ShardingError, ShardPlan, Slice
from autodeploy.distributed.region import Region, Solver, even_slice
from autodeploy.distributed.rewrite import region_rewrites
from autodeploy.distributed.styles import Styles
from autodeploy.graph import aten, is_op, nodes_of, val
from autodeploy.models.weights import checkpoint_name
from autodeploy.ops import bound_args

ops = torch.ops.autodeploy

# Ops between the lm_head and the output that act on each token's row alone.
_ROWWISE = (aten.to, aten._to_copy, aten.alias, aten.clone, aten.contiguous, aten.tanh, aten.mul, aten.div,
            aten.add, aten.sub)


def module_path(param: str) -> str:
    """Graph parameter name -> the module path HF plans use, e.g. `model.layers.0.mlp.up_proj`."""
    return checkpoint_name(param).rsplit(".", 1)[0]


def _weight(linear: fx.Node) -> fx.Node | None:
    w = linear.args[1] if len(linear.args) > 1 else None
    return w if isinstance(w, fx.Node) and w.op == "get_attr" else None


def _linear_path(linear: fx.Node) -> str:
    w = _weight(linear)
    return module_path(w.target) if w is not None else linear.name


def _common_path(paths: list[str]) -> str:
    parts = [p.split(".") for p in paths]
    common = []
    for level in zip(*parts):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    if len(paths) == 1:
        return ".".join(parts[0][:-1]) or paths[0]
    return ".".join(common) or ",".join(dict.fromkeys(paths))  # modules at the root: name them all


# ---- region groups (attention, gated MLP, tp_plan seeds) ------------------------------------------
def _attention_slices(attn: fx.Node, world: int, rank: int) -> tuple[Slice, Slice, str]:
    a = bound_args(attn)
    n, n_kv = int(val(a["q"]).shape[2]), int(val(a["k"]).shape[2])
    name = attn.meta.get("nn_module_stack", {})
    where = next(reversed(name.values()))[0] if name else attn.name
    if n % world:
        raise ShardingError(f"{where}: {n} attention heads do not split over {world} ranks "
                            f"(choose a world size dividing {n})")
    n_l = n // world
    q_sl = Slice(2, ((rank * n_l, (rank + 1) * n_l),), n)
    if n_kv % world == 0:
        kv_sl, how = Slice.even(2, n_kv, world, rank), f"kv heads {n_kv} -> {n_kv // world}"
    elif world % n_kv == 0 and n % n_kv == 0:
        h = rank // (world // n_kv)  # the one KV head this rank's query heads read
        kv_sl, how = Slice(2, ((h, h + 1),), n_kv), f"kv heads {n_kv} -> 1 (replicated x{world // n_kv})"
    else:
        raise ShardingError(f"{where}: {n_kv} KV heads neither split over {world} ranks nor replicate "
                            f"evenly ({world} is not a multiple of {n_kv})")
    return q_sl, kv_sl, f"heads {n} -> {n_l}, {how}"


def _solve_attention(attn: fx.Node, q_sl: Slice, kv_sl: Slice) -> Region:
    a = bound_args(attn)
    s = Solver()
    inputs = {a["q"]: q_sl, a["k"]: kv_sl, a["v"]: kv_sl}
    if isinstance(a["sinks"], fx.Node):  # one logit per query head
        inputs[a["sinks"]] = Slice(0, q_sl.ranges, q_sl.size)
    s.anchor(attn, q_sl, inputs)
    return s.solve()


def _solve_seed(node: fx.Node, sl: Slice) -> Region:
    s = Solver()
    s.hold(node, sl)
    return s.solve()


def _group_from_region(kind: str, region: Region, split: str, source: str = "heuristic") -> ShardGroup:
    params: dict[str, ParamShard] = {t: ParamShard(t, sl) for t, sl in region.params.items()}
    for lin, sl in region.rows.items():
        w = _weight(lin)
        if w is None:
            raise Unsupported(f"{lin.name}: row linear without a parameter weight")
        params[w.target] = ParamShard(w.target, Slice(1, sl.ranges, sl.size))
    paths = [_linear_path(n) for n in list(region.columns) + list(region.rows)]
    closing = ", ".join(sorted({p.rsplit(".", 1)[-1] for p in map(_linear_path, region.rows)}))
    return ShardGroup(kind, _common_path(paths), split, f"all_reduce after {closing}" if closing else "none",
                      params=params, source=source, columns=list(region.columns), rows=list(region.rows),
                      node_slices=dict(region.slices))


def _check_params(gm: fx.GraphModule, group: ShardGroup, inside: set[fx.Node]) -> None:
    """Every read of a sliced parameter must be inside the region (a weight shared with a whole
    region elsewhere cannot be both)."""
    for node in gm.graph.nodes:
        if node.op == "get_attr" and node.target in group.params:
            outside = [u.name for u in node.users if u not in inside]
            if outside:
                raise Unsupported(f"{node.target} is also read by {outside[0]}, outside the region")


class _Claims:
    """Which nodes and parameters the accepted groups hold; a later group may not overlap them."""

    def __init__(self) -> None:
        self.nodes: set[fx.Node] = set()
        self.params: set[str] = set()

    def free(self, group: ShardGroup, inside: set[fx.Node]) -> bool:
        return not (inside & self.nodes) and not (set(group.params) & self.params)

    def take(self, group: ShardGroup, inside: set[fx.Node]) -> None:
        self.nodes |= inside
        self.params |= set(group.params)


def _region_nodes(group: ShardGroup) -> set[fx.Node]:
    return set(group.node_slices) | set(group.columns) | set(group.rows)


def _styled_conflict(group: ShardGroup, styles: Styles) -> tuple[str, str] | None:
    """(message, source) when the tp_plans disagree with the group; 'replicate' wins outright."""
    for lin, want in [(n, "column") for n in group.columns] + [(n, "row") for n in group.rows]:
        st = styles.of(_linear_path(lin))
        if st is None or st[0] == "other" or st[0] == want:
            continue
        style, source, pattern = st
        if style == "replicate":
            return f"{group.name}: replicated by {source} ('{pattern}')", "replicate"
        return (f"{_linear_path(lin)}: {source} asks '{pattern}' to be {style}-split, but the graph "
                f"{'opens' if want == 'column' else 'closes'} a {group.kind} region there ({want} split)"), source
    return None


def _accept(plan: ShardPlan, gm, group: ShardGroup, claims: _Claims, styles: Styles) -> bool:
    inside = _region_nodes(group)
    try:
        _check_params(gm, group, inside)
        region_rewrites(group)  # every shape constant it needs must be rewritable
    except Unsupported as e:
        plan.notes.append(f"{group.name}: left whole ({e})")
        return False
    conflict = _styled_conflict(group, styles)
    if conflict is not None:
        msg, source = conflict
        if source == "recipe tp_plan":
            raise ShardingError(msg)
        plan.notes.append(msg if source == "replicate" else f"{msg}; kept the graph's split")
        if source == "replicate":
            return False
    if not claims.free(group, inside):
        plan.notes.append(f"{group.name}: overlaps another sharded region; left whole")
        return False
    claims.take(group, inside)
    plan.groups.append(group)
    return True


def _attention_groups(gm, plan: ShardPlan, claims: _Claims, styles: Styles) -> None:
    for attn in nodes_of(gm, ops.attention):
        q_sl, kv_sl, split = _attention_slices(attn, plan.world_size, plan.rank)
        try:
            group = _group_from_region("attention", _solve_attention(attn, q_sl, kv_sl), split)
        except Unsupported as e:
            plan.notes.append(f"attention {attn.name}: left whole ({e})")
            continue
        group.anchor = attn
        _accept(plan, gm, group, claims, styles)


def _mlp_groups(gm, plan: ShardPlan, claims: _Claims, styles: Styles) -> None:
    for act in nodes_of(gm, ops.gated_mlp_act):
        f = val(act).shape[-1]
        try:
            sl = even_slice(act, val(act).dim() - 1, plan.world_size, plan.rank)
            group = _group_from_region("mlp", _solve_seed(act, sl), f"intermediate {f} -> {sl.local}")
        except Unsupported as e:
            plan.notes.append(f"gated MLP {act.name}: left whole ({e})")
            continue
        _accept(plan, gm, group, claims, styles)


def _styled_groups(gm, plan: ShardPlan, claims: _Claims, styles: Styles) -> None:
    """Linears the tp_plans call colwise that no heuristic region covers: a region seeded there."""
    for lin in nodes_of(gm, aten.linear):
        st = styles.of(_linear_path(lin))
        if st is None or st[0] != "column" or lin in claims.nodes:
            continue
        style, source, pattern = st
        try:
            sl = even_slice(lin, val(lin).dim() - 1, plan.world_size, plan.rank)
            group = _group_from_region("tp_plan", _solve_seed(lin, sl), f"'{pattern}' {sl}", source)
            if not group.rows:
                raise Unsupported("no closing linear")
        except Unsupported as e:
            if source == "recipe tp_plan":
                raise ShardingError(f"{_linear_path(lin)}: {source} asks '{pattern}' to be colwise, but {e}") from None
            plan.notes.append(f"{_linear_path(lin)}: {source} '{pattern}' ignored ({e})")
            continue
        _accept(plan, gm, group, claims, styles)


# ---- embedding and lm_head ------------------------------------------------------------------------
def _vocab_group(kind: str, anchor: fx.Node, weight: fx.Node, plan: ShardPlan, styles: Styles,
                 bias: fx.Node | None = None) -> ShardGroup | None:
    path = module_path(weight.target)
    st = styles.of(path)
    if st is not None and st[0] == "replicate":
        plan.notes.append(f"{path}: replicated by {st[1]} ('{st[2]}')")
        return None
    vocab = int(val(weight).shape[0])
    if vocab % plan.world_size:
        plan.notes.append(f"{path}: vocabulary {vocab} does not split over {plan.world_size} ranks; left whole")
        return None
    if len(weight.users) != 1:
        plan.notes.append(f"{path}: weight read elsewhere in the graph; left whole")
        return None
    sl = Slice.even(0, vocab, plan.world_size, plan.rank)
    params = {weight.target: ParamShard(weight.target, sl)}
    if bias is not None:
        params[bias.target] = ParamShard(bias.target, sl)
    collective = "all_reduce" if kind == "embedding" else "all_gather of the logits"
    return ShardGroup(kind, path, f"vocab {vocab} -> {sl.local}", collective, params=params, anchor=anchor)


def _embedding_groups(gm, plan: ShardPlan, claims: _Claims, styles: Styles) -> None:
    for emb in nodes_of(gm, aten.embedding):
        w = emb.args[0]
        if not (isinstance(w, fx.Node) and w.op == "get_attr" and val(w).dim() == 2) or w.target in claims.params:
            continue
        group = _vocab_group("embedding", emb, w, plan, styles)
        if group is not None:
            claims.take(group, {emb})
            plan.groups.append(group)


def lm_head(gm: fx.GraphModule) -> fx.Node | None:
    """The linear producing the logits: walking back from the output through row-wise ops."""
    out = next(n for n in reversed(gm.graph.nodes) if n.op == "output").args[0]
    x = out[0] if isinstance(out, (tuple, list)) else out
    while isinstance(x, fx.Node) and x.op == "call_function":
        if is_op(x, aten.linear):
            return x if _weight(x) is not None and len(x.users) == 1 else None
        if not is_op(x, _ROWWISE) or any(isinstance(a, fx.Node) for a in x.args[1:]) or len(x.users) != 1:
            return None
        x = x.args[0]
    return None


def _lm_head_group(gm, plan: ShardPlan, claims: _Claims, styles: Styles) -> None:
    lin = lm_head(gm)
    if lin is None or lin in claims.nodes:
        return
    w = _weight(lin)
    bias = lin.args[2] if len(lin.args) > 2 and isinstance(lin.args[2], fx.Node) else None
    if w.target in claims.params:
        return
    group = _vocab_group("lm_head", lin, w, plan, styles, bias)
    if group is not None:
        claims.take(group, {lin})
        plan.groups.append(group)


# ---- the plan ------------------------------------------------------------------------------------
def detect_plan(gm: fx.GraphModule, world: int, rank: int, *, hf_config: Any = None,
                tp_plan: dict[str, str] | None = None, use_hf_plan: bool = True,
                vocab_parallel: bool = True) -> ShardPlan:
    """The plan for `rank` of `world`; an empty plan at world size 1. Does not touch the graph."""
    plan = ShardPlan(world, rank)
    if world <= 1:
        return plan
    hf_plan = None
    if use_hf_plan and hf_config is not None:
        text = hf_config.get_text_config() if hasattr(hf_config, "get_text_config") else hf_config
        hf_plan = getattr(text, "base_model_tp_plan", None) or None
    styles = Styles(tp_plan, hf_plan)
    claims = _Claims()
    _attention_groups(gm, plan, claims, styles)
    _mlp_groups(gm, plan, claims, styles)
    _styled_groups(gm, plan, claims, styles)
    if vocab_parallel:
        _embedding_groups(gm, plan, claims, styles)
        _lm_head_group(gm, plan, claims, styles)
    plan.account(gm)
    return plan
