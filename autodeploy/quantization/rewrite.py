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


def install_params(
    gm: fx.GraphModule, graph_name: str, spec: dict[str, tuple[tuple[int, ...], torch.dtype]], make: PartsFn,
    consumes: list[str], fake_like: fx.Node,
) -> dict[str, fx.Node]:
    """Replace parameter `graph_name` by the parts in `spec` (leaf -> shape, dtype), produced at load by
    `make`; returns a get_attr node per leaf, inserted before `fake_like`'s first user."""
    owner, _ = _split(graph_name)
    current = gm.get_parameter(graph_name)
    parts = _Parts(make)
    plan = weight_plan(gm)
    real = None if current.is_meta else make(lambda name: current.detach())  # quantize now
    mod = gm.get_submodule(owner) if owner else gm
    del mod._parameters[_split(graph_name)[1]]
    nodes: dict[str, fx.Node] = {}
    fake_mode = getattr(val(fake_like), "fake_mode", None)
    first_user = next(iter(fake_like.users))
    for i, (leaf, (shape, dtype)) in enumerate(spec.items()):
        tensor = real[leaf] if real is not None else torch.empty(shape, dtype=dtype, device="meta")
        full = _register(gm, owner, leaf, tensor)
        plan.set(full, lambda fetch, leaf=leaf: parts.part(leaf, fetch), consumes=consumes if i == 0 else None)
        with gm.graph.inserting_before(first_user):
            node = gm.graph.get_attr(full)
        if fake_mode is not None:
            node.meta["val"] = fake_mode.from_tensor(gm.get_parameter(full))
        nodes[leaf] = node
    return nodes


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
