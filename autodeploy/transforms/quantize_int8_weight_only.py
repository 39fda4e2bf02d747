"""quantize_int8_weight_only: linears -> autodeploy::int8_wo_linear, int8 weights quantized as they load.

    before:  y = aten.linear(x, get_attr(...down_proj.weight), b)          # weight [N, K] bf16
    after:   y = autodeploy.int8_wo_linear(x, get_attr(...down_proj.weight),        # [N, K] int8
                                           get_attr(...down_proj.weight_scale), b)  # [N] fp32

Symmetric, one scale per output channel; activations stay in their dtype. MoE expert stacks are
stored in int8 and dequantized in the graph before autodeploy::moe:

    w_gu = autodeploy.dequantize_per_channel(get_attr(...experts.gate_up_proj), get_attr(..._scale), bf16)

Linears that read one input with one config (q/k/v, gate/up) become one quantized GEMM whose rows
are the members' (row-wise scales make that exact), then split_with_sizes, as fuse_gemms does for
plain linears (which it never sees again: they are no longer aten.linear). fuse_shared_input: false
keeps one op per layer.

Layers: include / exclude globs over module names, per-layer overrides ({skip: true}). Off unless
the recipe enables it.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

import autodeploy.transforms.plan_quantization  # noqa: F401  (registers first: its plan feeds this transform)
from autodeploy.quantization.apply import quantize_graph
from autodeploy.quantization.config import Int8WeightOnlyConfig
from autodeploy.quantization.selection import SelectionFields, check_overrides
from autodeploy.transforms.pipeline import Stage, TransformInfo, register


class QuantizeInt8WeightOnlyConfig(SelectionFields):
    experts: bool = Field(True, description="Also store MoE expert stacks in int8 (dequantized before the expert op).")

    def build(self, values: dict[str, Any]) -> Int8WeightOnlyConfig:
        return Int8WeightOnlyConfig(**values)

    @model_validator(mode="after")
    def _check(self):
        check_overrides(self.overrides, self.build)
        return self


@register(Stage.QUANTIZE, QuantizeInt8WeightOnlyConfig)
def apply(gm, ctx, cfg: QuantizeInt8WeightOnlyConfig) -> TransformInfo:
    return quantize_graph(gm, cfg, cfg.build, experts=cfg.experts)
