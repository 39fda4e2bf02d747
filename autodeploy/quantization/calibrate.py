"""The calibration pass: run the model once on calibration tokens, quantizing int4 / fp8 layers as it goes.

The int4 transform snapshots the graph before rewriting it (canonical ops, full-precision linears)
and registers `Calibrator.run` as a WeightPlan before-load hook: when weights load, the snapshot
runs node by node on the calibration batch with the real weights, and at each calibrated linear

    gptq: H = 2 X^T X / n from the linear's actual input, Hessian-based rounding (int4 groups or
          e4m3); the layer's output is then computed by its quantized op (FP8 activations included),
          so every later layer calibrates on the inputs it will really see (sequential GPTQ);
    awq:  for the linears sharing this input (q/k/v, gate/up), one scale search and one clip search
          each; outputs stay full precision (AWQ calibrates on the original activations). 1/s is
          folded into the RMSNorm weight before the group, or into the rows of `up` when the input
          is act(gate) * up (exact: asymmetric int4 is invariant to a positive row scale).

Results wait in the calibrator until the producers of the quantized parameters (and of folded
norm weights) hand them to the loader. A linear's full-precision weight is taken (popped) from the
checkpoint when it is quantized, so weights never exist twice beyond one layer; everything else is
only peeked at and loads as usual afterwards.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import fx

from autodeploy.graph import aten, is_op
from autodeploy.models.weights import Fetch, checkpoint_name, weight_plan
from autodeploy.quantization import awq, gptq
from autodeploy.quantization.calibration import fit_batch
from autodeploy.quantization.config import Fp8Config, Int4WeightOnlyConfig
from autodeploy.quantization.registry import method_for
from autodeploy.quantization.rewrite import LinearSite

log = logging.getLogger(__name__)


@dataclass
class _Layer:
    name: str  # module name
    target: str  # weight's graph name
    cfg: Int4WeightOnlyConfig | Fp8Config
    source: Callable[[Fetch], torch.Tensor] | None = None  # an earlier plan rule for the weight


@dataclass
class _Fold:
    kind: str  # "norm" | "up"
    target: str  # the norm weight's graph name, or the `up` linear's module name
    add_unit_offset: bool = False


@dataclass
class _AwqGroup:
    members: list[fx.Node]
    fold: _Fold | None
    done: bool = False
    outputs: dict[fx.Node, torch.Tensor] = field(default_factory=dict)


def snapshot(gm: fx.GraphModule) -> tuple[fx.GraphModule, dict[fx.Node, fx.Node]]:
    """A copy of the graph sharing today's tensors (meta parameters, real buffers), with a node map."""
    graph = fx.Graph()
    val_map: dict[fx.Node, fx.Node] = {}
    out = graph.graph_copy(gm.graph, val_map)
    graph.output(out)
    return fx.GraphModule(gm, graph), val_map


def _sole_users(node: fx.Node, members: set[fx.Node]) -> bool:
    return set(node.users) <= members


class Calibrator:
    def __init__(self, gm: fx.GraphModule, chosen: list[tuple[LinearSite, Int4WeightOnlyConfig | Fp8Config]], tokens: torch.Tensor):
        self.snap, val_map = snapshot(gm)
        self.rules = dict(weight_plan(gm).rules)  # parameters produced by earlier transforms
        self.derived = dict(weight_plan(gm).derived)  # buffers computed, not read (position tables)
        self.device: torch.device | None = None  # the device of the calibration pass (run())
        self.tokens = fit_batch(tokens, gm.meta.get("dynamic_dims"))  # [b, s] within the exported limits
        self.layers: dict[fx.Node, _Layer] = {}
        for site, cfg in chosen:
            self.layers[val_map[site.node]] = _Layer(site.name, site.weight.target, cfg, self.rules.get(site.weight.target))
        self.results: dict[str, dict[str, torch.Tensor]] = {}  # module name -> parts
        self.norms: dict[str, torch.Tensor] = {}  # folded norm weights by graph name
        self.groups = self._awq_groups()
        self._hinv: tuple[tuple[fx.Node, float], tuple[torch.Tensor, torch.Tensor]] | None = None
        self.ran = False

    # ---- planning (at transform time) -------------------------------------------------------
    def _awq_groups(self) -> dict[fx.Node, _AwqGroup]:
        by_input: dict[tuple, list[fx.Node]] = {}
        for node, layer in self.layers.items():
            if layer.cfg.method == "awq":
                by_input.setdefault((node.args[0], layer.cfg.group_size), []).append(node)
        groups: dict[fx.Node, _AwqGroup] = {}
        for (x, _), members in by_input.items():
            group = _AwqGroup(members, self._fold_target(x, set(members)))
            for m in members:
                groups[m] = group
        return groups

    def _fold_target(self, x: fx.Node, members: set[fx.Node]) -> _Fold | None:
        if not isinstance(x, fx.Node) or not _sole_users(x, members):
            return None
        if is_op(x, torch.ops.autodeploy.rmsnorm.default):
            w = x.args[1]
            if isinstance(w, fx.Node) and w.op == "get_attr" and len(w.users) == 1:
                offset = bool(x.args[3]) if len(x.args) > 3 else bool(x.kwargs.get("add_unit_offset", False))
                return _Fold("norm", w.target, offset)
        if is_op(x, torch.ops.autodeploy.gated_mlp_act.default):
            up = x.args[1]
            layer = self.layers.get(up)
            if layer is not None and layer.cfg.method == "awq" and len(up.users) == 1 and up.args[2:] in ((), (None,)):
                return _Fold("up", layer.name)
        return None

    def folded_norms(self) -> list[str]:
        """Graph names of the norm weights this calibration rewrites (they need their own producers)."""
        return sorted({g.fold.target for g in self.groups.values() if g.fold is not None and g.fold.kind == "norm"})

    # ---- the pass (at load) -----------------------------------------------------------------
    def run(self, fetch: Fetch, peek: Fetch, device: torch.device) -> None:
        if self.ran:
            return
        from autodeploy.export.device import retarget_device

        retarget_device(self.snap, device)  # factory ops traced on meta (arange, full) name the real device
        self.device = torch.device(device)
        tokens = self.tokens.to(device)
        pos = torch.arange(tokens.shape[1], device=device).expand_as(tokens)
        with torch.no_grad():
            _Runner(self, fetch, peek, device).run(tokens, pos)
        self._hinv = None
        self.ran = True

    def parts(self, name: str) -> dict[str, torch.Tensor]:
        if name not in self.results:
            raise RuntimeError(f"calibration produced nothing for {name} (did the calibration pass run?)")
        return self.results.pop(name)

    def norm(self, target: str) -> torch.Tensor:
        return self.norms.pop(target)

    def _weight(self, layer: _Layer, fetch: Fetch) -> torch.Tensor:
        return layer.source(fetch) if layer.source is not None else fetch(checkpoint_name(layer.target))

    def gptq_layer(self, node: fx.Node, x: torch.Tensor, bias, fetch: Fetch) -> torch.Tensor:
        layer = self.layers[node]
        w = self._weight(layer, fetch)
        fp8 = isinstance(layer.cfg, Fp8Config)
        key = (node.args[0], gptq.FP8_DAMP if fp8 else gptq.DAMP)
        if self._hinv is None or self._hinv[0] != key:  # q/k/v (gate/up) share one inverse Hessian
            self._hinv = (key, gptq.prepare(gptq.hessian(x), key[1]))
        if fp8:
            parts = gptq.quantize_fp8(w, self._hinv[1], layer.cfg.granularity)
        else:
            parts = gptq.quantize(w, self._hinv[1], layer.cfg.group_size)
        self.results[layer.name] = parts
        method = method_for(layer.cfg)  # later layers see the quantized op's output
        return method.op(*method.call_args(x, parts, bias, layer.cfg))

    def awq_layer(self, node: fx.Node, x: torch.Tensor, biases: dict[fx.Node, Any], fetch: Fetch, peek: Fetch):
        group = self.groups[node]
        if not group.done:
            layers = [self.layers[m] for m in group.members]
            weights = [self._weight(l, fetch) for l in layers]
            g = layers[0].cfg.group_size
            for m, w in zip(group.members, weights):
                group.outputs[m] = F.linear(x, w, biases.get(m))
            s, parts = awq.quantize_group(x, weights, g, scale_input=group.fold is not None)
            for layer, p in zip(layers, parts):
                self.results[layer.name] = p
            if s is not None:
                self._fold(group.fold, s, peek)
            group.done = True
            del weights
        return group.outputs.pop(node)

    def _fold(self, fold: _Fold, s: torch.Tensor, peek: Fetch) -> None:
        if fold.kind == "norm":
            w = self.norms.get(fold.target)
            if w is None:
                w = self._tensor(fold.target, peek)
            wf = w.float()
            folded = (1.0 + wf) / s - 1.0 if fold.add_unit_offset else wf / s
            self.norms[fold.target] = folded.to(w.dtype)
        else:  # rows of `up` (already quantized): its output channel c is divided by s[c]
            parts = self.results[fold.target]
            parts["scales"] = (parts["scales"].float() / s.unsqueeze(-1)).to(parts["scales"].dtype)

    def _tensor(self, target: str, peek: Fetch) -> torch.Tensor:
        if target in self.derived:
            return self.derived[target](self.device)
        rule = self.rules.get(target)
        return rule(peek) if rule is not None else peek(checkpoint_name(target))


class _Runner(fx.Interpreter):
    """Runs the snapshot with checkpoint tensors; calibrated linears go through the Calibrator."""

    def __init__(self, cal: Calibrator, fetch: Fetch, peek: Fetch, device: torch.device):
        super().__init__(cal.snap, garbage_collect_values=True)
        self.cal, self.fetch, self.peek, self.device = cal, fetch, peek, device
        self.skip = {n.args[1] for n in cal.layers}  # their weights are taken by the calibrator itself

    def run_node(self, n: fx.Node) -> Any:
        if n in self.skip:
            return None
        if n in self.cal.layers:
            x = self.env[n.args[0]]
            layer = self.cal.layers[n]
            if layer.cfg.method == "gptq":
                return self.cal.gptq_layer(n, x, self._bias(n), self.fetch)
            group = self.cal.groups[n]
            biases = {m: self._bias(m) for m in group.members}
            return self.cal.awq_layer(n, x, biases, self.fetch, self.peek)
        return super().run_node(n)

    def _bias(self, linear: fx.Node) -> torch.Tensor | None:
        b = linear.args[2] if len(linear.args) > 2 else None
        if b is None:
            return None
        if b in self.env:
            return self.env[b]
        return self.get_attr(b.target, (), {})  # a group member's bias not computed yet

    def get_attr(self, target: str, args, kwargs) -> Any:
        held = self.fetch_attr(target)
        if isinstance(held, torch.Tensor) and not held.is_meta:
            return held.to(self.device)  # real buffers (RoPE tables) and tests' real weights
        if target in self.cal.norms:
            return self.cal.norms[target]
        return self.cal._tensor(target, self.peek)
