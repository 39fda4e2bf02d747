"""The method registry, keyed by config class: what a quantized linear is made of and how to build it.

    method = method_for(Int4WeightOnlyConfig(group_size=64))
    method.params(n, k, dtype, cfg)    {"qweight": ([n, k/2], uint8), "scales": ..., "zeros": ...}
    method.quantize(w, cfg)            {"qweight": tensor, ...}: round-to-nearest from a [N, K] weight
    method.call_args(x, p, bias, cfg)  the canonical op's arguments, `p` the params by leaf name
    method.dequantize(p, cfg, dtype)   back to a [N, K] weight (sensitivity, tests, checkpoints)
    method.unsupported(n, k, cfg)      why a [N, K] weight cannot take this method, or None
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor

import autodeploy.ops  # noqa: F401  (registers the quantized linear ops)
from autodeploy.quantization import fp8, int4, int8
from autodeploy.quantization.config import Fp8Config, Int4WeightOnlyConfig, Int8WeightOnlyConfig

ParamSpec = dict[str, tuple[tuple[int, ...], torch.dtype]]


@dataclass(frozen=True)
class QuantMethod:
    op: Any  # OpOverload
    params: Callable[[int, int, torch.dtype, Any], ParamSpec]
    quantize: Callable[[Tensor, Any], dict[str, Tensor]]
    call_args: Callable[[Any, dict[str, Any], Any, Any], tuple]
    dequantize: Callable[[dict[str, Tensor], Any, torch.dtype], Tensor]
    unsupported: Callable[[int, int, Any], str | None]


_METHODS: dict[type, QuantMethod] = {}


def register_method(config_cls: type, method: QuantMethod) -> None:
    _METHODS[config_cls] = method


def method_for(cfg: Any) -> QuantMethod:
    try:
        return _METHODS[type(cfg)]
    except KeyError:
        raise ValueError(f"no quantization method registered for {type(cfg).__name__}") from None


def _fp8_params(n, k, dtype, cfg: Fp8Config) -> ParamSpec:
    scale = (n,) if cfg.granularity == "per_channel" else ()
    return {"weight": ((n, k), fp8.DTYPE), "weight_scale": (scale, torch.float32)}


register_method(Fp8Config, QuantMethod(
    op=torch.ops.autodeploy.fp8_linear.default,
    params=_fp8_params,
    quantize=lambda w, cfg: fp8.quantize(w, cfg.granularity),
    call_args=lambda x, p, bias, cfg: (x, p["weight"], p["weight_scale"], bias, cfg.activation_scheme == "dynamic"),
    dequantize=lambda p, cfg, dtype: fp8.dequantize(p["weight"], p["weight_scale"], dtype),
    unsupported=lambda n, k, cfg: None,
))

register_method(Int8WeightOnlyConfig, QuantMethod(
    op=torch.ops.autodeploy.int8_wo_linear.default,
    params=lambda n, k, dtype, cfg: {"weight": ((n, k), torch.int8), "weight_scale": ((n,), torch.float32)},
    quantize=lambda w, cfg: int8.quantize(w),
    call_args=lambda x, p, bias, cfg: (x, p["weight"], p["weight_scale"], bias),
    dequantize=lambda p, cfg, dtype: int8.dequantize(p["weight"], p["weight_scale"], dtype),
    unsupported=lambda n, k, cfg: None,
))


def _int4_params(n, k, dtype, cfg: Int4WeightOnlyConfig) -> ParamSpec:
    groups = k // cfg.group_size
    return {"qweight": ((n, k // 2), torch.uint8), "scales": ((n, groups), dtype), "zeros": ((n, groups), dtype)}


register_method(Int4WeightOnlyConfig, QuantMethod(
    op=torch.ops.autodeploy.int4_wo_linear.default,
    params=_int4_params,
    quantize=lambda w, cfg: int4.quantize(w, cfg.group_size),
    call_args=lambda x, p, bias, cfg: (x, p["qweight"], p["scales"], p["zeros"], bias, cfg.group_size),
    dequantize=lambda p, cfg, dtype: int4.dequantize(p["qweight"], p["scales"], p["zeros"], cfg.group_size, dtype),
    unsupported=lambda n, k, cfg: int4.check_shape(n, k, cfg.group_size),
))
