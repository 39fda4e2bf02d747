"""Producers for calibrated layers (int4 awq / gptq, fp8 gptq), shared by the quantize_* transforms.

    makers = calibrated_producers(gm, ctx, calibration_cfg, chosen, details)   # {module name: producer}

One Calibrator pass (calibrate.py) serves every calibrated layer of a transform: it runs now when the
graph already holds real weights (tests), or as a before-load hook of the weight plan otherwise.
Layers whose config says method "rtn" get no producer (they round as they load).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import fx

from autodeploy.models.weights import checkpoint_name, weight_plan
from autodeploy.quantization.calibrate import Calibrator
from autodeploy.quantization.calibration import CalibrationConfig, calibration_tokens, context_tokenizer
from autodeploy.quantization.rewrite import weight_source


def _real_lookup(gm: fx.GraphModule) -> dict[str, torch.Tensor]:
    out = {checkpoint_name(n): t.detach() for n, t in gm.named_parameters()}
    out.update({checkpoint_name(n): b for n, b in gm.named_buffers()})
    return out


def calibrated_producers(gm: fx.GraphModule, ctx, calibration: CalibrationConfig, chosen, details: dict[str, Any]):
    """Producers for the non-rtn layers of `chosen` [(site, config)], fed by one calibration pass."""
    layers = [(s, c) for s, c in chosen if c.method != "rtn"]
    if not layers:
        return {}
    tokens = ctx.extra.get("calibration_tokens")
    if tokens is None:
        tokens = calibration_tokens(calibration, context_tokenizer(ctx))
    details["calibration_tokens"] = list(tokens.shape)
    cal = Calibrator(gm, layers, tokens)
    plan = weight_plan(gm)
    norms = cal.folded_norms()
    details["folded_norms"] = len(norms)
    for target in norms:
        source, consumes = weight_source(gm, target)
        plan.set(target, lambda fetch, t=target, src=source: (src(fetch), cal.norm(t))[1], consumes=consumes)
    if not gm.get_parameter(layers[0][0].weight.target).is_meta:  # weights already in the graph: calibrate now
        lookup = _real_lookup(gm)
        device = next(iter(lookup.values())).device
        cal.run(lookup.__getitem__, lookup.__getitem__, device)
        for target in norms:
            owner, _, leaf = target.rpartition(".")
            mod = gm.get_submodule(owner) if owner else gm
            mod._parameters[leaf] = torch.nn.Parameter(cal.norm(target), requires_grad=False)
    else:
        plan.before_load.append(cal.run)
    return {site.name: (lambda fetch, name=site.name: cal.parts(name)) for site, _ in layers}
