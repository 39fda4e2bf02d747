"""The body shared by the quantize_* transforms: pick layers, rewrite them, report.

Each transform brings its settings (a pydantic config with the selection fields) and `build`, which
turns a layer's settings into the method config (Fp8Config, ...). Layers already taken by an earlier
quantize transform are no longer `aten.linear`, so two transforms never quantize one layer.
"""

from __future__ import annotations

from typing import Any, Callable

from torch import fx

from autodeploy.models.weights import checkpoint_name
from autodeploy.quantization.config import QuantConfig
from autodeploy.quantization.registry import method_for
from autodeploy.quantization.rewrite import (
    LinearSite, PartsFn, expert_sites, fusable_groups, linear_sites, quantize_experts, quantize_fused, quantize_linear,
)
from autodeploy.quantization.selection import SelectionFields, layer_config
from autodeploy.transforms.pipeline import TransformInfo

PLAN_KEY = "quantization_plan"  # gm.meta: {"keep": [module names kept in higher precision], ...}


def kept_layers(gm: fx.GraphModule) -> set[str]:
    plan = gm.meta.get(PLAN_KEY) or {}
    return set(plan.get("keep", []))


def selected_linears(gm: fx.GraphModule, cfg: SelectionFields, build: Callable[[dict], QuantConfig]):
    """[(site, layer config)] of the linears this transform takes, and {name: reason} of those it cannot."""
    keep = kept_layers(gm)
    chosen, skipped = [], {}
    for site in linear_sites(gm):
        qcfg = layer_config(site.name, cfg, build, keep)
        if qcfg is None:
            continue
        qcfg = cfg.adjust(qcfg, *site.shape)
        why = method_for(qcfg).unsupported(*site.shape, qcfg)
        if why:
            skipped[site.name] = why
            continue
        chosen.append((site, qcfg))
    return chosen, skipped


def quantize_graph(
    gm: fx.GraphModule,
    cfg: SelectionFields,
    build: Callable[[dict[str, Any]], QuantConfig],
    *,
    experts: bool = False,
    makers: Callable[[list[tuple[LinearSite, QuantConfig]]], dict[str, PartsFn]] | None = None,
) -> TransformInfo:
    """Quantize the selected linears (and MoE expert stacks when `experts`); `makers` may supply
    calibrated producers by module name (AWQ / GPTQ), built before any rewrite."""
    chosen, skipped = selected_linears(gm, cfg, build)
    special = makers(chosen) if makers is not None and chosen else {}
    layers: dict[str, str] = {}
    groups = fusable_groups(chosen) if cfg.fuse_shared_input else []
    grouped = {id(site) for group in groups for site, _ in group}
    for group in groups:
        quantize_fused(gm, group, special)
    for site, qcfg in chosen:
        if id(site) not in grouped:
            quantize_linear(gm, site, qcfg, special.get(site.name))
        layers[site.name] = qcfg.name
    gemms = len(groups) + len(chosen) - len(grouped)
    n_experts = 0
    if experts:
        keep = kept_layers(gm)
        for site in expert_sites(gm):
            qcfg = layer_config(site.name, cfg, build, keep)
            if qcfg is not None:
                layers[checkpoint_name(site.weight.target)] = qcfg.name  # the stack: ...experts.gate_up_proj
                quantize_experts(gm, site, qcfg)
                n_experts += 1
    matches = len(chosen) + n_experts
    warning = None
    if not matches:
        warning = "no layer matched the include / exclude globs" + (f" ({len(skipped)} unsupported)" if skipped else "")
    return TransformInfo(
        matches=matches, changed=matches > 0, warning=warning,
        details={"layers": layers, "gemms": gemms, "unsupported": skipped, "expert_stacks": n_experts},
    )
