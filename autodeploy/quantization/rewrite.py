"""Graph side of quantization: find the linears (and MoE expert stacks), swap in the quantized op,
register its parameters on the meta device and record in the WeightPlan how each is produced.

    before:  w = get_attr(...q_proj.weight)              y = aten.linear(x, w, b)
    after:   qw, s, z = get_attr(...q_proj.qweight / .scales / .zeros)
             y = autodeploy.int4_wo_linear(x, qw, s, z, b, group_size)

Quantize on load: the producer of `q_proj.qweight` fetches the full-precision `q_proj.weight`,
quantizes it and hands out the parts (`scales`, `zeros` come from the same call); the full-precision
tensor is dropped right away, so only one layer is ever held in both forms. A graph that already
holds real weights (a module exported with them, as in tests) is quantized at once.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import fx, nn

from autodeploy.graph import aten, is_op, val
from autodeploy.models.weights import Fetch, checkpoint_name, weight_plan
from autodeploy.quantization import fp8, int8
from autodeploy.quantization.config import Fp8Config, Int8WeightOnlyConfig
from autodeploy.quantization.registry import method_for

# A source of a layer's quantized parts: fetch -> {leaf: tensor}. Default: round to nearest.
PartsFn = Callable[[Fetch], dict[str, torch.Tensor]]


@dataclass
class LinearSite:
    node: fx.Node  # aten.linear(x, weight, bias?)
    weight: fx.Node  # get_attr of a 2-d parameter read by this linear only
    bias: fx.Node | None
    name: str  # module name as in the checkpoint: model.layers.0.self_attn.q_proj

    @property
    def graph_name(self) -> str:
        return self.weight.target

    @property
    def shape(self) -> tuple[int, int]:
        n, k = val(self.weight).shape
        return int(n), int(k)


def module_name(graph_param: str) -> str:
    return checkpoint_name(graph_param).rpartition(".")[0]


def _get_attr_counts(gm: fx.GraphModule) -> dict[str, int]:
    counts: dict[str, int] = {}
    for n in gm.graph.nodes:
        if n.op == "get_attr":
            counts[n.target] = counts.get(n.target, 0) + 1
    return counts


def _is_param(gm: fx.GraphModule, target: str) -> bool:
    try:
        gm.get_parameter(target)
        return True
    except AttributeError:
        return False


def linear_sites(gm: fx.GraphModule) -> list[LinearSite]:
    """Linears whose weight is a 2-d floating parameter read by that linear alone (tied weights stay)."""
    counts = _get_attr_counts(gm)
    sites = []
    for node in gm.graph.nodes:
        if not is_op(node, aten.linear.default) or node.kwargs or len(node.args) < 2:
            continue
        w = node.args[1]
        if not isinstance(w, fx.Node) or w.op != "get_attr" or len(w.users) != 1 or counts[w.target] != 1:
            continue
        if not _is_param(gm, w.target) or val(w) is None or val(w).dim() != 2 or not val(w).is_floating_point():
            continue
        bias = node.args[2] if len(node.args) > 2 else None
        sites.append(LinearSite(node, w, bias, module_name(w.target)))
    return sites


class _Parts:
    """Produces a layer's quantized tensors once per load and hands out each part once."""

    def __init__(self, make: PartsFn) -> None:
        self.make = make
        self.parts: dict[str, torch.Tensor] | None = None

    def part(self, leaf: str, fetch: Fetch) -> torch.Tensor:
        if self.parts is None or leaf not in self.parts:  # (a calibration pass may have taken one early)
            self.parts = self.make(fetch)
        t = self.parts.pop(leaf)
        if not self.parts:
            self.parts = None  # every part handed out: a later load quantizes afresh
        return t


def _split(target: str) -> tuple[str, str]:
    owner, _, leaf = target.rpartition(".")
    return owner, leaf


def _register(gm: fx.GraphModule, owner: str, leaf: str, tensor: torch.Tensor) -> str:
    mod = gm.get_submodule(owner) if owner else gm
    mod._parameters.pop(leaf, None)
    mod.register_parameter(leaf, nn.Parameter(tensor, requires_grad=False))
    return f"{owner}.{leaf}" if owner else leaf


def weight_source(gm: fx.GraphModule, graph_name: str) -> tuple[Callable[[Fetch], torch.Tensor], list[str]]:
    """How to get a parameter's full-precision value at load (an earlier rule, else its checkpoint
    tensor), and the checkpoint names that only this use consumes. Takes the rule out of the plan."""
    plan = weight_plan(gm)
    prior = plan.rules.pop(graph_name, None)
    if prior is not None:
        return prior, []
    name = checkpoint_name(graph_name)
    return (lambda fetch: fetch(name)), [name]


def _add_parts(
    gm: fx.GraphModule, owner: str, spec: dict[str, tuple[tuple[int, ...], torch.dtype]], make: PartsFn,
    consumes: list[str], real: dict[str, torch.Tensor] | None, fake_mode, before: fx.Node,
) -> dict[str, fx.Node]:
    """Register the parts in `spec` (leaf -> shape, dtype) under `owner`, on meta unless `real` holds
    them, each produced at load by `make`; returns a get_attr node per leaf, inserted before `before`."""
    parts = _Parts(make)
    plan = weight_plan(gm)
    nodes: dict[str, fx.Node] = {}
    for i, (leaf, (shape, dtype)) in enumerate(spec.items()):
        tensor = real[leaf] if real is not None else torch.empty(shape, dtype=dtype, device="meta")
        full = _register(gm, owner, leaf, tensor)
        plan.set(full, lambda fetch, leaf=leaf: parts.part(leaf, fetch), consumes=consumes if i == 0 else None)
        with gm.graph.inserting_before(before):
            node = gm.graph.get_attr(full)
        if fake_mode is not None:
            node.meta["val"] = fake_mode.from_tensor(gm.get_parameter(full), static_shapes=True)
        nodes[leaf] = node
    return nodes


def _drop_param(gm: fx.GraphModule, graph_name: str) -> torch.Tensor:
    owner, leaf = _split(graph_name)
    return (gm.get_submodule(owner) if owner else gm)._parameters.pop(leaf)


def install_params(
    gm: fx.GraphModule, graph_name: str, spec: dict[str, tuple[tuple[int, ...], torch.dtype]], make: PartsFn,
    consumes: list[str], fake_like: fx.Node,
) -> dict[str, fx.Node]:
    """Replace parameter `graph_name` by the parts in `spec` (leaf -> shape, dtype), produced at load by
    `make`; returns a get_attr node per leaf, inserted before `fake_like`'s first user."""
    owner, _ = _split(graph_name)
    current = _drop_param(gm, graph_name)
    real = None if current.is_meta else make(lambda name: current.detach())  # quantize now
    fake_mode = getattr(val(fake_like), "fake_mode", None)
    return _add_parts(gm, owner, spec, make, consumes, real, fake_mode, next(iter(fake_like.users)))


def quantize_linear(
    gm: fx.GraphModule, site: LinearSite, cfg: Any, make: PartsFn | None = None, *,
    consumes: list[str] | None = None, spec: dict | None = None,
) -> fx.Node:
    """Rewrite one linear to `cfg`'s quantized op. `make` overrides how the parts are produced (with
    the checkpoint names it alone reads in `consumes`), `spec` the parts' shapes and dtypes."""
    method = method_for(cfg)
    n, k = site.shape
    dtype = val(site.weight).dtype
    source, own = weight_source(gm, site.graph_name)
    if make is None:
        make = lambda fetch, source=source: method.quantize(source(fetch), cfg)  # noqa: E731
    spec = spec or method.params(n, k, dtype, cfg)
    nodes = install_params(gm, site.graph_name, spec, make, own if consumes is None else consumes, site.weight)
    graph = gm.graph
    x = site.node.args[0]
    with graph.inserting_before(site.node):
        new = graph.call_function(method.op, method.call_args(x, nodes, site.bias, cfg))
    new.meta["val"] = site.node.meta.get("val")
    for key in ("nn_module_stack", "stack_trace"):
        if key in site.node.meta:
            new.meta[key] = site.node.meta[key]
    site.node.replace_all_uses_with(new)
    graph.erase_node(site.node)
    graph.erase_node(site.weight)
    return new


# ---- MoE expert stacks (weight-only: dequantized in the graph before autodeploy::moe) ------------

@dataclass
class ExpertSite:
    moe: fx.Node
    weight: fx.Node  # get_attr of the [E, a, b] stack
    input_dim: int  # the stored dim holding the input channels (2, or 1 when read through a transpose)
    name: str  # module name: model.layers.0.mlp.experts


def expert_sites(gm: fx.GraphModule) -> list[ExpertSite]:
    """The expert weight stacks of autodeploy::moe nodes (direct, or through a [1, 2] transpose)."""
    counts = _get_attr_counts(gm)
    sites = []
    for node in gm.graph.nodes:
        if not is_op(node, torch.ops.autodeploy.moe.default):
            continue
        for arg in node.args[2:4]:  # w_gate_up [E, 2f, h], w_down [E, h, f]
            w, input_dim = arg, 2
            if isinstance(arg, fx.Node) and is_op(arg, aten.transpose.int) and tuple(arg.args[1:]) == (1, 2):
                w, input_dim = arg.args[0], 1
            if not isinstance(w, fx.Node) or w.op != "get_attr" or counts[w.target] != 1 or len(w.users) != 1:
                continue
            if not _is_param(gm, w.target) or val(w) is None or val(w).dim() != 3:
                continue
            sites.append(ExpertSite(node, w, input_dim, module_name(w.target)))
    return sites


def quantize_experts(gm: fx.GraphModule, site: ExpertSite, cfg: Any) -> None:
    """[E, a, b] stack -> int8 / e4m3 stack + fp32 scale (keepdim over the input channels) + dequant node."""
    v = val(site.weight)
    scale_shape = list(v.shape)
    scale_shape[site.input_dim] = 1
    if isinstance(cfg, Int8WeightOnlyConfig):
        qdtype, quant = torch.int8, lambda w: int8.quantize(w, dim=site.input_dim)
    elif isinstance(cfg, Fp8Config):
        qdtype, quant = fp8.DTYPE, lambda w: fp8.quantize(w, cfg.granularity, dim=site.input_dim)
        if cfg.granularity == "per_tensor":
            scale_shape = []
    else:
        raise ValueError(f"MoE experts take int8 or fp8 weight-only quantization, not {type(cfg).__name__}")
    source, consumes = weight_source(gm, site.weight.target)
    spec = {"weight": (tuple(v.shape), qdtype), "weight_scale": (tuple(scale_shape), torch.float32)}
    owner, leaf = _split(site.weight.target)
    spec = {leaf: spec["weight"], f"{leaf}_scale": spec["weight_scale"]}

    def make(fetch, source=source, leaf=leaf):
        p = quant(source(fetch))
        return {leaf: p["weight"], f"{leaf}_scale": p["weight_scale"]}

    user = next(iter(site.weight.users))
    nodes = install_params(gm, site.weight.target, spec, make, consumes, site.weight)
    with gm.graph.inserting_before(user):
        deq = gm.graph.call_function(
            torch.ops.autodeploy.dequantize_per_channel.default, (nodes[leaf], nodes[f"{leaf}_scale"], v.dtype)
        )
    deq.meta["val"] = v
    site.weight.replace_all_uses_with(deq)
    gm.graph.erase_node(site.weight)



# ---- shared-input groups: one quantized GEMM + split (as fuse_gemms does for plain linears) -----

def _sole_bias(site: LinearSite) -> bool:
    b = site.bias
    return isinstance(b, fx.Node) and b.op == "get_attr" and len(b.users) == 1 and val(b) is not None


def fusable_groups(chosen: list[tuple[LinearSite, Any]]) -> list[list[tuple[LinearSite, Any]]]:
    """Sites that read the same input with equal configs, all with bias or none, one weight dtype.

    Row-wise quantization (a scale per output channel or per output-channel group) commutes with
    concatenating weights along N, so the fused parts are exactly the members' parts. FP8 with one
    scale per tensor does not (each member has its own), so it stays apart."""
    by_key: dict[tuple, list[tuple[LinearSite, Any]]] = {}
    for site, cfg in chosen:
        if getattr(cfg, "granularity", None) == "per_tensor" or (site.bias is not None and not _sole_bias(site)):
            continue
        key = (site.node.args[0], cfg, site.bias is not None, val(site.weight).dtype)
        by_key.setdefault(key, []).append((site, cfg))
    return [g for g in by_key.values() if len(g) > 1]


def _group_owner(gm: fx.GraphModule, sites: list[LinearSite]) -> tuple[str, str]:
    """(owner module path, attribute stem), e.g. (`...self_attn`, `fused_q_proj_k_proj_v_proj`)."""
    paths = [s.graph_name.split(".")[:-1] for s in sites]  # the members' module paths
    common: list[str] = []
    for parts in zip(*paths):
        if len(set(parts)) != 1:
            break
        common.append(parts[0])
    owner = ".".join(common)
    stem = base = "fused_" + "_".join("_".join(p[len(common):]) for p in paths)
    mod, i = gm.get_submodule(owner) if owner else gm, 1
    while any(name.startswith(stem + "_") for name in mod._parameters):
        stem, i = f"{base}_{i}", i + 1
    return owner, stem


def _fuse_bias(gm: fx.GraphModule, sites: list[LinearSite], owner: str, stem: str, before: fx.Node) -> fx.Node:
    """The members' biases as one parameter (concatenated at load), like their weights."""
    sources, consumes = zip(*(weight_source(gm, s.bias.target) for s in sites))
    fake_mode = getattr(val(sites[0].bias), "fake_mode", None)
    current = [_drop_param(gm, s.bias.target) for s in sites]
    name = f"{stem}_bias"
    real = None if current[0].is_meta else {name: torch.cat([t.detach() for t in current])}
    spec = {name: ((sum(int(t.shape[0]) for t in current),), current[0].dtype)}

    def make(fetch, sources=sources):
        return {name: torch.cat([src(fetch) for src in sources])}

    return _add_parts(gm, owner, spec, make, [c for cs in consumes for c in cs], real, fake_mode, before)[name]


def quantize_fused(gm: fx.GraphModule, members: list[tuple[LinearSite, Any]], makes: dict[str, PartsFn],
                   consumes: dict[str, list[str]] | None = None) -> fx.Node:
    """One quantized op for linears that share an input; the parts are concatenated along N at load.

        before:  q = linear(x, Wq, bq)    k = linear(x, Wk, bk)    v = linear(x, Wv, bv)
        after:   qkv = autodeploy.int4_wo_linear(x, QW_qkv, S_qkv, Z_qkv, b_qkv, g)   # rows [nq | nk | nv]
                 q, k, v = split_with_sizes(qkv, [nq, nk, nv], -1)
    """
    sites = [s for s, _ in members]
    cfg = members[0][1]
    method = method_for(cfg)
    dtype = val(sites[0].weight).dtype
    sizes = [s.shape[0] for s in sites]
    owner, stem = _group_owner(gm, sites)
    makers, taken = [], []
    for site in sites:
        source, own = weight_source(gm, site.graph_name)
        taken += consumes[site.name] if consumes and site.name in consumes else own
        makers.append(makes.get(site.name) or (lambda fetch, source=source: method.quantize(source(fetch), cfg)))
    spec = method.params(sum(sizes), sites[0].shape[1], dtype, cfg)

    def make(fetch, makers=tuple(makers)):
        parts = [m(fetch) for m in makers]
        return {f"{stem}_{leaf}": torch.cat([p[leaf] for p in parts], dim=0) for leaf in spec}

    current = {checkpoint_name(s.graph_name): _drop_param(gm, s.graph_name) for s in sites}
    meta = next(iter(current.values())).is_meta
    real = None if meta else make(lambda name: current[name].detach())
    graph, first, x = gm.graph, sites[0].node, sites[0].node.args[0]
    fake_mode = getattr(val(sites[0].weight), "fake_mode", None)
    nodes = _add_parts(gm, owner, {f"{stem}_{leaf}": v for leaf, v in spec.items()}, make, taken, real, fake_mode, first)
    nodes = {leaf: nodes[f"{stem}_{leaf}"] for leaf in spec}
    bias = _fuse_bias(gm, sites, owner, stem, first) if sites[0].bias is not None else None
    with graph.inserting_before(first):
        out = graph.call_function(method.op, method.call_args(x, nodes, bias, cfg))
        split = graph.call_function(aten.split_with_sizes.default, (out, sizes, -1))
        pieces = [graph.call_function(operator.getitem, (split, i)) for i in range(len(sites))]
    x_val = val(x)
    if x_val is not None:
        out.meta["val"] = x_val.new_empty(tuple(x_val.shape[:-1]) + (sum(sizes),))
        split.meta["val"] = list(torch.split(out.meta["val"], sizes, dim=-1))
    for i, (site, piece) in enumerate(zip(sites, pieces)):
        if x_val is not None:
            piece.meta["val"] = split.meta["val"][i]
        for key in ("nn_module_stack", "stack_trace"):
            if key in site.node.meta:
                piece.meta.setdefault(key, site.node.meta[key])
        site.node.replace_all_uses_with(piece)
        graph.erase_node(site.node)
        graph.erase_node(site.weight)
        if site.bias is not None:
            graph.erase_node(site.bias)
    return out
