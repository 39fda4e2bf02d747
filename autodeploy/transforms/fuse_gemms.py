"""fuse_gemms: linears that read the same input become one GEMM whose output is split.

    before:  q = linear(x, Wq, bq)    k = linear(x, Wk, bk)    v = linear(x, Wv, bv)
    after:   qkv = linear(x, W_qkv, b_qkv)                  # W_qkv [nq + nk + nv, h]
             q, k, v = split_with_sizes(qkv, [nq, nk, nv], -1)

One launch instead of three reads x once and fills the GPU better at decode (three skinny GEMMs
of a 1B model's layer take ~1.6x the time of one wide one on an H100). The fused form is plain
`aten.linear` + `split_with_sizes` rather than a new canonical op: later passes (backend
selection, compile) already know `linear`, and the split outputs are views, not copies.

Weights are never held twice. The fused parameter is registered on the meta device and its
producer recorded in the graph's WeightPlan: at load time `torch.cat` builds it from the parts,
which the loader then drops, so peak memory rises by at most the largest fused weight. (A graph
exported from a module that already holds real weights, as in tests, gets the concatenation now
and drops the parts at once.)

Fused together: linears with the same input node whose weight (and bias, all or none) are
parameters used by that linear alone, in one dtype. Others (tied weights, casts on the weight as
in DeepSeek's fp32 router) are left as they are.
"""

from __future__ import annotations

import operator
from collections import defaultdict

import torch
from torch import fx, nn

from autodeploy.graph import aten, is_op, val
from autodeploy.models.weights import checkpoint_name, weight_plan
from autodeploy.transforms.pipeline import Stage, TransformInfo, register


def _sole_param(gm: fx.GraphModule, node, ndim: int, targets: dict[str, int]) -> bool:
    """A get_attr of an `ndim` parameter that only this one linear reads."""
    if not isinstance(node, fx.Node) or node.op != "get_attr" or len(node.users) != 1 or targets[node.target] != 1:
        return False
    v = val(node)
    return v is not None and v.dim() == ndim


def _fusable(gm: fx.GraphModule, lin: fx.Node, targets: dict[str, int]) -> bool:
    if not is_op(lin, aten.linear.default) or lin.kwargs:
        return False
    bias = lin.args[2] if len(lin.args) > 2 else None
    return _sole_param(gm, lin.args[1], 2, targets) and (bias is None or _sole_param(gm, bias, 1, targets))


def _groups(gm: fx.GraphModule) -> list[list[fx.Node]]:
    targets: dict[str, int] = defaultdict(int)
    for n in gm.graph.nodes:
        if n.op == "get_attr":
            targets[n.target] += 1
    groups = []
    for x in gm.graph.nodes:
        by_kind: dict[tuple, list[fx.Node]] = defaultdict(list)
        for lin in x.users:
            if lin.args and lin.args[0] is x and _fusable(gm, lin, targets):
                has_bias = len(lin.args) > 2 and lin.args[2] is not None
                by_kind[(val(lin.args[1]).dtype, has_bias)].append(lin)
        groups += [g for g in by_kind.values() if len(g) > 1]
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    return [sorted(g, key=order.__getitem__) for g in groups]


def _fused_name(names: list[str]) -> tuple[str, str]:
    """Parts' graph names -> (owner module path, attribute), e.g. (`...self_attn`, `fused_q_proj_k_proj_v_proj_weight`)."""
    paths = [n.split(".") for n in names]
    common = []
    for parts in zip(*(p[:-1] for p in paths)):
        if len(set(parts)) != 1:
            break
        common.append(parts[0])
    leaves = {p[-1] for p in paths}
    keep = -1 if len(leaves) == 1 else None  # one leaf name (weight / bias): say it once, at the end
    rel = ["_".join(p[len(common):keep]) for p in paths]
    suffix = f"_{paths[0][-1]}" if keep else ""
    return ".".join(common), f"fused_{'_'.join(rel)}{suffix}"


def _register_fused(gm: fx.GraphModule, parts: list[fx.Node]) -> str:
    """Register the concatenated parameter (on meta) and its WeightPlan producer; drop the parts."""
    names = [p.target for p in parts]
    owner_path, attr = _fused_name(names)
    owner = gm.get_submodule(owner_path) if owner_path else gm
    base, i = attr, 1
    while hasattr(owner, attr):
        attr, i = f"{base}_{i}", i + 1
    tensors = [gm.get_parameter(n) for n in names]
    if all(t.is_meta for t in tensors):  # the usual case: weights load after the transforms
        shape = (sum(t.shape[0] for t in tensors),) + tuple(tensors[0].shape[1:])
        fused = torch.empty(shape, dtype=tensors[0].dtype, device="meta")
    else:  # a graph that already holds its weights (a module exported with them): concatenate now
        fused = torch.cat([t.detach() for t in tensors], dim=0)
    owner.register_parameter(attr, nn.Parameter(fused, requires_grad=False))
    plan = weight_plan(gm)
    rules = [plan.rules.pop(n, None) for n in names]  # parts produced by an earlier plan (sharding) keep it

    def produce(fetch, names=tuple(names), rules=tuple(rules)):
        return torch.cat([r(fetch) if r is not None else fetch(checkpoint_name(n)) for n, r in zip(names, rules)], dim=0)

    new_name = f"{owner_path}.{attr}" if owner_path else attr
    plan.set(new_name, produce, consumes=[checkpoint_name(n) for n, r in zip(names, rules) if r is None])
    for n in names:
        mod_path, _, leaf = n.rpartition(".")
        mod = gm.get_submodule(mod_path) if mod_path else gm
        del mod._parameters[leaf]
    return new_name


def _fuse(gm: fx.GraphModule, group: list[fx.Node]) -> None:
    graph = gm.graph
    x = group[0].args[0]
    weights = [lin.args[1] for lin in group]
    biases = [lin.args[2] for lin in group] if len(group[0].args) > 2 and group[0].args[2] is not None else []
    sizes = [int(val(w).shape[0]) for w in weights]
    with graph.inserting_before(group[0]):
        w_node = graph.get_attr(_register_fused(gm, weights))
        b_node = graph.get_attr(_register_fused(gm, biases)) if biases else None
        fused = graph.call_function(aten.linear.default, (x, w_node) + ((b_node,) if b_node is not None else ()))
        split = graph.call_function(aten.split_with_sizes.default, (fused, sizes, -1))
        outs = [graph.call_function(operator.getitem, (split, i)) for i in range(len(group))]
    x_val = val(x)
    for node in (w_node, b_node):
        if node is not None:  # a fake tensor in the mode the graph was traced with
            node.meta["val"] = x_val.fake_mode.from_tensor(gm.get_parameter(node.target), static_shapes=True)
    fused.meta["val"] = x_val.new_empty(tuple(x_val.shape[:-1]) + (sum(sizes),), dtype=val(weights[0]).dtype)
    split.meta["val"] = list(torch.split(fused.meta["val"], sizes, dim=-1))
    for lin, out, piece in zip(group, outs, split.meta["val"]):
        out.meta["val"] = piece
        for key in ("nn_module_stack", "stack_trace"):
            if key in lin.meta:
                out.meta.setdefault(key, lin.meta[key])
        lin.replace_all_uses_with(out)
        graph.erase_node(lin)
    for p in weights + biases:
        graph.erase_node(p)


@register(Stage.FUSE)
def apply(gm: fx.GraphModule, ctx, cfg) -> TransformInfo:
    groups = _groups(gm)
    for group in groups:
        _fuse(gm, group)
    fused = sum(len(g) for g in groups)
    return TransformInfo(matches=len(groups), changed=bool(groups), details={"linears_fused": fused})
