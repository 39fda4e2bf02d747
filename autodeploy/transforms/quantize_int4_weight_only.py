"""quantize_int4_weight_only: linears -> autodeploy::int4_wo_linear, group-wise int4 made as weights load.

    before:  y = aten.linear(x, get_attr(...q_proj.weight), b)             # weight [N, K] bf16
    after:   y = autodeploy.int4_wo_linear(x, get_attr(...q_proj.qweight),   # [N, K/2] uint8 (2 per byte)
                                           get_attr(...q_proj.scales),       # [N, K/g]
                                           get_attr(...q_proj.zeros),        # [N, K/g]
                                           b, group_size)

`method` (per layer through overrides too):
    rtn   round to nearest, each weight quantized on its own as it loads;
    gptq  Hessian-based rounding, sequential over the layers;
    awq   activation-aware input scales (folded into the RMSNorm before q/k/v and gate/up, and into
          `up` before `down`) plus a clip search.
gptq and awq run one calibration pass when the weights load (see autodeploy/quantization/calibrate.py)
on `calibration` text: a file, a list of strings, token ids, or by default the English text shipped
in autodeploy/data/calibration_en.txt. With awq, a folded RMSNorm weight is produced by the same pass:

    before:  n = autodeploy.rmsnorm(h, get_attr(...input_layernorm.weight), eps)   # w
    after:   n = autodeploy.rmsnorm(h, get_attr(...input_layernorm.weight), eps)   # w / s (same shape)

Linears that read one input with one config (q/k/v, gate/up) become one quantized GEMM whose rows
are the members' (row-wise scales make that exact), then split_with_sizes, as fuse_gemms does for
plain linears (which it never sees again: they are no longer aten.linear). fuse_shared_input: false
keeps one op per layer.

Layers: include / exclude globs over module names, per-layer overrides (group_size, method,
skip). A layer whose input size is not a multiple of group_size takes the largest of 64 / 32 that
divides it (SmolLM2's hidden size 576 = 4.5 x 128), unless group_size_fallback is off. MoE expert
stacks are left to the int8 / fp8 transforms. Off unless the recipe enables it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from pydantic import Field, model_validator

import autodeploy.transforms.plan_quantization  # noqa: F401  (registers first: its plan feeds this transform)
from autodeploy.quantization.apply import quantize_graph
from autodeploy.quantization.calibrated import calibrated_producers
from autodeploy.quantization.calibration import CalibrationConfig
from autodeploy.quantization.config import GROUP_SIZES, Int4WeightOnlyConfig
from autodeploy.quantization.selection import SelectionFields, check_overrides
from autodeploy.transforms.pipeline import Stage, TransformInfo, register


class QuantizeInt4WeightOnlyConfig(SelectionFields):
    group_size: Literal[32, 64, 128] = Field(128, description="Input channels sharing one scale and zero point.")
    method: Literal["rtn", "awq", "gptq"] = Field("rtn", description="Round to nearest, AWQ or GPTQ (calibrated).")
    group_size_fallback: bool = Field(
        True, description="A layer whose input size is not a multiple of group_size takes the largest smaller one that divides it."
    )
    calibration: CalibrationConfig = Field(
        default_factory=CalibrationConfig, description="Calibration text for awq / gptq (default: shipped English text)."
    )

    def build(self, values: dict[str, Any]) -> Int4WeightOnlyConfig:
        return Int4WeightOnlyConfig(**({"group_size": self.group_size, "method": self.method} | values))

    def adjust(self, qcfg: Int4WeightOnlyConfig, n: int, k: int) -> Int4WeightOnlyConfig:
        if not self.group_size_fallback or k % qcfg.group_size == 0:
            return qcfg
        smaller = [g for g in GROUP_SIZES if g < qcfg.group_size and k % g == 0 and k % 2 == 0]
        return dataclasses.replace(qcfg, group_size=max(smaller)) if smaller else qcfg

    @model_validator(mode="after")
    def _check(self):
        check_overrides(self.overrides, self.build)
        return self


@register(Stage.QUANTIZE, QuantizeInt4WeightOnlyConfig)
def apply(gm, ctx, cfg: QuantizeInt4WeightOnlyConfig) -> TransformInfo:
    details: dict[str, Any] = {}
    info = quantize_graph(gm, cfg, cfg.build, makers=lambda chosen: calibrated_producers(gm, ctx, cfg.calibration, chosen, details))
    info.details.update(details)
    return info
