"""Sensitivity analysis: how much each layer's quantization alone hurts the model's output, and the
plan that keeps the worst ones in higher precision within an accuracy budget.

    error_i = |logits - logits_i|^2 / |logits|^2     logits_i: only layer i quantized (its config, rounded
                                                     to nearest), on a few calibration windows
    total   ~ sum of error_i over the quantized layers (independent rounding noise adds in power)

The plan keeps the layers with the largest error_i in their original precision until the estimated
total fits the budget (a noise-to-signal power ratio: 0.01 = 20 dB logits SQNR), then measures the
planned model once to report the real figure next to the estimate.

Each measurement is one forward of a copy of the graph holding real weights, where every candidate
linear calls a switch: plain F.linear, or the quantized op for the one layer under test. One graph,
no recompiles; the cost is one forward per candidate layer.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import fx, nn

from autodeploy.models.weights import checkpoint_name, weight_plan
from autodeploy.quantization.calibrate import snapshot
from autodeploy.quantization.metrics import noise_ratio
from autodeploy.quantization.registry import method_for
from autodeploy.quantization.rewrite import LinearSite

log = logging.getLogger(__name__)


class _Switch(nn.Module):
    """F.linear, or the quantized version of the layer named `key` while it is the one under test."""

    def __init__(self) -> None:
        super().__init__()
        self.active: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}

    def forward(self, x, w, b, key: str):
        fn = self.active.get(key)
        return fn(x) if fn is not None else F.linear(x, w, b)


def _held(mod: nn.Module, target: str):
    owner, _, leaf = target.rpartition(".")
    return getattr(mod.get_submodule(owner) if owner else mod, leaf)


def _set(mod: nn.Module, target: str, tensor: torch.Tensor) -> None:
    owner, _, leaf = target.rpartition(".")
    parent = mod.get_submodule(owner) if owner else mod
    parent._parameters.pop(leaf, None)
    parent._buffers.pop(leaf, None)
    parent.register_buffer(leaf, tensor, persistent=False)


def materialize(gm: fx.GraphModule, tensor_for: Callable[[str], torch.Tensor], device: torch.device,
                sites: list[LinearSite]) -> tuple[fx.GraphModule, dict[str, fx.Node], _Switch]:
    """A copy of `gm` with real tensors (`tensor_for(graph name)`), each site's linear behind the switch."""
    from autodeploy.export.device import retarget_device

    copy, val_map = snapshot(gm)
    derived = weight_plan(gm).derived  # buffers computed on the device, read from no checkpoint
    for node in copy.graph.nodes:
        if node.op == "get_attr":
            cur = _held(copy, node.target)
            if node.target in derived:
                _set(copy, node.target, derived[node.target](device))
            elif isinstance(cur, torch.Tensor):
                _set(copy, node.target, (tensor_for(node.target) if cur.is_meta else cur).to(device))
    switch = _Switch()
    copy.add_module("quant_switch", switch)
    nodes = {}
    for site in sites:
        lin = val_map[site.node]
        args = lin.args + ((None,) if len(lin.args) < 3 else ())
        with copy.graph.inserting_before(lin):
            new = copy.graph.call_module("quant_switch", args[:3] + (site.name,))
        lin.replace_all_uses_with(new)
        copy.graph.erase_node(lin)
        nodes[site.name] = new
    retarget_device(copy, device)
    copy.recompile()
    return copy, nodes, switch


@dataclass
class LayerError:
    name: str
    config: str
    error: float  # noise / signal power of the logits with only this layer quantized

    @property
    def sqnr_db(self) -> float:
        return -10.0 * math.log10(self.error) if self.error > 0 else math.inf


@torch.no_grad()
def layer_errors(model: fx.GraphModule, switch: _Switch, weights: dict[str, torch.Tensor],
                 biases: dict[str, torch.Tensor | None], configs: dict[str, Any], inputs: tuple) -> list[LayerError]:
    """error_i for each layer in `configs` (module name -> quantization config)."""
    switch.active.clear()
    ref = model(*inputs)
    out = []
    for name, cfg in configs.items():
        method = method_for(cfg)
        parts = method.quantize(weights[name], cfg)
        switch.active[name] = lambda x, p=parts, b=biases[name], c=cfg, m=method: m.op(*m.call_args(x, p, b, c))
        out.append(LayerError(name, cfg.name, noise_ratio(model(*inputs), ref)))
        switch.active.clear()
    return out


def choose(errors: list[LayerError], budget: float) -> list[str]:
    """The layers to keep in higher precision: the largest errors first, until the rest fit the budget."""
    keep, total = [], sum(e.error for e in errors)
    for e in sorted(errors, key=lambda e: -e.error):
        if total <= budget:
            break
        keep.append(e.name)
        total -= e.error
    return keep


@torch.no_grad()
def measure_plan(model, switch, weights, biases, configs, keep: set[str], inputs) -> float:
    """The real output error of the planned model (every layer not kept quantized at once)."""
    switch.active.clear()
    ref = model(*inputs)
    for name, cfg in configs.items():
        if name in keep:
            continue
        method = method_for(cfg)
        parts = method.quantize(weights[name], cfg)
        switch.active[name] = lambda x, p=parts, b=biases[name], c=cfg, m=method: m.op(*m.call_args(x, p, b, c))
    err = noise_ratio(model(*inputs), ref)
    switch.active.clear()
    return err


def plan_dict(errors: list[LayerError], keep: list[str], budget: float, measured: float) -> dict[str, Any]:
    kept = set(keep)
    estimate = sum(e.error for e in errors if e.name not in kept)
    return {
        "metric": "logits noise-to-signal power (one layer quantized at a time; the total adds them)",
        "budget": budget,
        "estimated_error": estimate,
        "measured_error": measured,
        "measured_sqnr_db": -10.0 * math.log10(measured) if measured > 0 else math.inf,
        "keep": sorted(kept),
        "layers": {e.name: {"config": e.config, "error": e.error, "sqnr_db": round(e.sqnr_db, 2),
                            "decision": "keep" if e.name in kept else "quantize"} for e in errors},
    }


def save_plan(plan: dict[str, Any], path: str | Path) -> Path:
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(plan, indent=2))
    return path


def load_plan(path: str | Path) -> dict[str, Any]:
    from autodeploy.errors import RecipeError

    p = Path(path).expanduser()
    try:
        plan = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise RecipeError(f"quantization plan {p}: cannot read ({e})") from None
    if not isinstance(plan, dict) or not isinstance(plan.get("keep"), list):
        raise RecipeError(f"quantization plan {p}: no 'keep' list of layer names")
    return plan


def plan_table(plan: dict[str, Any]):
    """A rich Table of a plan: per layer its config, error, SQNR and decision, worst first."""
    from rich.table import Table

    table = Table(title=f"Quantization plan (budget {plan['budget']:g}, measured {plan['measured_error']:.3g} = "
                        f"{plan['measured_sqnr_db']:.1f} dB)")
    for col in ("layer", "config", "error", "SQNR dB", "decision"):
        table.add_column(col, justify="right" if col in ("error", "SQNR dB") else "left")
    rows = sorted(plan["layers"].items(), key=lambda kv: -kv[1]["error"])
    for name, row in rows:
        table.add_row(name, row["config"], f"{row['error']:.3g}", f"{row['sqnr_db']:.1f}", row["decision"])
    return table


def tensors_from_state(state: dict[str, torch.Tensor]) -> Callable[[str], torch.Tensor]:
    def tensor_for(graph_name: str) -> torch.Tensor:
        return state[checkpoint_name(graph_name)]

    return tensor_for
