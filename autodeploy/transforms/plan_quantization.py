"""plan_quantization: measure each layer's sensitivity and keep the worst in higher precision.

Runs before the quantize_* transforms (same stage; they import this module so it registers first).
For every linear some enabled quantize_* transform would take, it measures the model's output error
with only that layer quantized, then keeps the most sensitive layers unquantized until the summed
error of the rest fits `budget` (see autodeploy/quantization/sensitivity.py). The graph is not
changed here; the plan is:

    gm.meta["quantization_plan"] = {"keep": [module names], "layers": {...}, "budget": ...}

which the quantize_* transforms read (a kept layer is skipped, as an exclude glob would). The plan
is logged, saved as JSON (`save_path`, default <cache>/quantization_plans/<model>.json) and can be
given back with `plan_file` to skip the measurement. `autodeploy optimize --quant-budget 0.01`
enables it. Measuring needs the weights: the checkpoint is read once here and freed before loading.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import torch
from pydantic import Field, model_validator

import autodeploy.transforms.map_quantized_checkpoint  # noqa: F401  (registers first: checkpoint layers are taken)
from autodeploy.errors import RecipeError
from autodeploy.models.weights import weight_plan
from autodeploy.quantization.apply import PLAN_KEY, selected_linears
from autodeploy.quantization.calibration import CalibrationConfig, calibration_tokens, context_tokenizer, fit_batch
from autodeploy.quantization import sensitivity
from autodeploy.transforms.pipeline import Stage, TransformConfig, TransformInfo, ordered_specs, register

log = logging.getLogger(__name__)
QUANTIZERS = ("quantize_fp8", "quantize_int4_weight_only", "quantize_int8_weight_only")


class PlanQuantizationConfig(TransformConfig):
    enabled: bool = Field(False, description="Measure per-layer sensitivity and plan within `budget`.")
    budget: float | None = Field(
        None, gt=0, description="Largest output error allowed: logits noise-to-signal power (0.01 = 20 dB SQNR)."
    )
    calibration: CalibrationConfig = Field(
        default_factory=lambda: CalibrationConfig(num_sequences=2, seq_len=64),
        description="Text the sensitivity is measured on (default: the shipped English text).",
    )
    plan_file: str | None = Field(None, description="A saved plan (JSON) to apply instead of measuring.")
    save_path: str | None = Field(None, description="Where to write the plan; default <cache>/quantization_plans/.")

    @model_validator(mode="after")
    def _check(self):
        if self.enabled and self.budget is None and self.plan_file is None:
            raise ValueError("needs a budget (or a plan_file)")
        return self


def candidates(gm, ctx) -> dict[str, tuple[Any, Any]]:
    """{module name: (site, config)} of the linears the enabled quantize_* transforms would take, in
    pipeline order (the first transform to select a layer gets it)."""
    out: dict[str, tuple[Any, Any]] = {}
    for spec in ordered_specs():
        if spec.name not in QUANTIZERS:
            continue
        cfg = ctx.recipe.transform_config(spec.name)
        if not cfg.enabled:
            continue
        chosen, _ = selected_linears(gm, cfg, cfg.build)
        for site, qcfg in chosen:
            out.setdefault(site.name, (site, qcfg))
    return out


def _default_path(ctx) -> str:
    from autodeploy.models.example import cache_dir

    src = ctx.extra.get("source")
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", getattr(src, "spec", "model")).strip("_") or "model"
    return str(cache_dir() / "quantization_plans" / f"{name}.json")


def _weights(gm, ctx):
    """tensor_for(graph name) and the device: the graph's own tensors, else the checkpoint read once."""
    plan = weight_plan(gm)
    params = dict(gm.named_parameters())
    if params and not next(iter(params.values())).is_meta:
        return (lambda name: gm.get_parameter(name) if name in params else gm.get_buffer(name)), next(iter(params.values())).device
    src = ctx.extra.get("source")
    if src is None:
        raise RecipeError("plan_quantization needs the model's weights: run it through autodeploy.optimize")
    from autodeploy.models.factory import materialize_state

    device = torch.device(ctx.recipe.runtime.device)
    state = materialize_state(src, ctx.recipe, device)
    fetch_state = sensitivity.tensors_from_state(state)

    def tensor_for(name: str) -> torch.Tensor:
        rule = plan.rules.get(name)
        return rule(lambda n: state[n]) if rule is not None else fetch_state(name)

    return tensor_for, device


@register(Stage.QUANTIZE, PlanQuantizationConfig)
def apply(gm, ctx, cfg: PlanQuantizationConfig) -> TransformInfo:
    if cfg.plan_file is not None:
        plan = sensitivity.load_plan(cfg.plan_file)
        gm.meta[PLAN_KEY] = plan
        return TransformInfo(matches=len(plan["keep"]), details={"plan_file": cfg.plan_file, "keep": plan["keep"]})
    layers = candidates(gm, ctx)
    if not layers:
        return TransformInfo(warning="no enabled quantize_* transform takes any layer: nothing to plan")
    tensor_for, device = _weights(gm, ctx)
    sites = [site for site, _ in layers.values()]
    model, _, switch = sensitivity.materialize(gm, tensor_for, device, sites)
    weights = {name: tensor_for(site.weight.target).to(device) for name, (site, _) in layers.items()}
    biases = {name: (tensor_for(site.bias.target).to(device) if site.bias is not None else None)
              for name, (site, _) in layers.items()}
    tokens = ctx.extra.get("calibration_tokens")
    if tokens is None:
        tokens = calibration_tokens(cfg.calibration, context_tokenizer(ctx))
    tokens = fit_batch(tokens, gm.meta.get("dynamic_dims")).to(device)
    inputs = (tokens, torch.arange(tokens.shape[1], device=device).expand_as(tokens))
    configs = {name: qcfg for name, (_, qcfg) in layers.items()}
    errors = sensitivity.layer_errors(model, switch, weights, biases, configs, inputs)
    keep = sensitivity.choose(errors, cfg.budget)
    measured = sensitivity.measure_plan(model, switch, weights, biases, configs, set(keep), inputs)
    del model, weights, biases, tensor_for
    plan = sensitivity.plan_dict(errors, keep, cfg.budget, measured)
    path = sensitivity.save_plan(plan, cfg.save_path or _default_path(ctx))
    plan["path"] = str(path)
    gm.meta[PLAN_KEY] = plan
    log.info("quantization plan: %d of %d layers kept in higher precision, estimated error %.3g (budget %g), "
             "measured %.3g (%.1f dB); saved to %s", len(keep), len(errors), plan["estimated_error"], cfg.budget,
             measured, plan["measured_sqnr_db"], path)
    return TransformInfo(matches=len(keep), details={"keep": keep, "path": str(path), "measured_error": measured,
                                                     "estimated_error": plan["estimated_error"], "layers": len(errors)})
