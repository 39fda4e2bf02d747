"""quantize_fp8: linears -> autodeploy::fp8_linear with e4m3 weights quantized as they load.

    before:  w = get_attr(...q_proj.weight)                     # [N, K] bf16
             y = aten.linear(x, w, b)
    after:   w8 = get_attr(...q_proj.weight)                    # [N, K] float8_e4m3fn
             s  = get_attr(...q_proj.weight_scale)              # [N] fp32 (or [] per tensor)
             y = autodeploy.fp8_linear(x, w8, s, b, quantize_input)

MoE expert stacks (autodeploy::moe) are stored in e4m3 with a scale per expert and output channel
and dequantized in the graph before the expert op (memory, not speed):

    w_gu = autodeploy.dequantize_per_channel(get_attr(...experts.gate_up_proj), get_attr(..._scale), bf16)

Activations are scaled per token at run time ("dynamic"); on Hopper the product is one
torch._scaled_mm. Linears that read one input with one config (q/k/v, gate/up) become one quantized GEMM whose rows
are the members' (row-wise scales make that exact), then split_with_sizes, as fuse_gemms does for
plain linears (which it never sees again: they are no longer aten.linear). fuse_shared_input: false
keeps one op per layer.

`method` (per layer through overrides too): rtn rounds each weight to nearest e4m3 as it loads; gptq
rounds onto the same grid with Hessian-based error feedback from one calibration pass (see
autodeploy/quantization/gptq.py): the same tensors and ops, so nothing changes at run time.
SmolLM2-135M, weights only: rtn +3.4% perplexity, gptq about half that (BENCHMARKS.md).

Layers: include / exclude globs over module names, per-layer overrides (see
autodeploy/quantization/selection.py). Off unless the recipe enables it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

import autodeploy.transforms.plan_quantization  # noqa: F401  (registers first: its plan feeds this transform)
from autodeploy.quantization.apply import quantize_graph
from autodeploy.quantization.calibrated import calibrated_producers
from autodeploy.quantization.calibration import CalibrationConfig
from autodeploy.quantization.config import Fp8Config
from autodeploy.quantization.selection import SelectionFields, check_overrides
from autodeploy.transforms.pipeline import Stage, TransformInfo, register


class QuantizeFp8Config(SelectionFields):
    granularity: Literal["per_channel", "per_tensor"] = Field(
        "per_channel", description="One weight scale per output channel, or one per tensor."
    )
    activation_scheme: Literal["dynamic", "none"] = Field(
        "dynamic", description="dynamic: activations to e4m3 per token (FP8 GEMM); none: FP8 weights only."
    )
    method: Literal["rtn", "gptq"] = Field("rtn", description="Round to nearest, or GPTQ onto the e4m3 grid (calibrated).")
    calibration: CalibrationConfig = Field(
        default_factory=CalibrationConfig, description="Calibration text for gptq (default: shipped English text)."
    )
    experts: bool = Field(True, description="Also store MoE expert stacks in FP8 (dequantized before the expert op).")

    def build(self, values: dict[str, Any]) -> Fp8Config:
        mine = {"granularity": self.granularity, "activation_scheme": self.activation_scheme, "method": self.method}
        return Fp8Config(**(mine | values))

    @model_validator(mode="after")
    def _check(self):
        check_overrides(self.overrides, self.build)
        return self


@register(Stage.QUANTIZE, QuantizeFp8Config)
def apply(gm, ctx, cfg: QuantizeFp8Config) -> TransformInfo:
    details: dict[str, Any] = {}
    info = quantize_graph(gm, cfg, cfg.build, experts=cfg.experts,
                          makers=lambda chosen: calibrated_producers(gm, ctx, cfg.calibration, chosen, details))
    info.details.update(details)
    return info
