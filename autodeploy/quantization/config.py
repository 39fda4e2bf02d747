"""Quantization configs: one frozen dataclass per method, validated in `__post_init__` (torchao style).

    Fp8Config(granularity="per_channel", activation_scheme="dynamic",  e4m3 weights, per-token activations
              method="rtn")                                             (method="gptq": calibrated rounding)
    Int8WeightOnlyConfig()                                             int8 weights, per-channel scales
    Int4WeightOnlyConfig(group_size=128, method="rtn")                 packed int4, group-wise scales + zeros

The config is the key of the method registry (`autodeploy.quantization.registry`): it decides the
canonical op a linear becomes and how its weight is turned into that op's tensors.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

GROUP_SIZES = (32, 64, 128)
INT4_METHODS = ("rtn", "awq", "gptq")
FP8_METHODS = ("rtn", "gptq")


@dataclass(frozen=True)
class Fp8Config:
    """e4m3 weights with a scale per output channel (or one per tensor); activations quantized per token
    at run time ("dynamic") and multiplied by `torch._scaled_mm` on Hopper, or kept in the activation
    dtype ("none": FP8 weight-only). `method` picks how the e4m3 weights are chosen: round to nearest,
    or GPTQ onto the same grid (calibrated; same tensors, so every backend runs it unchanged)."""

    granularity: str = "per_channel"
    activation_scheme: str = "dynamic"
    method: str = "rtn"

    def __post_init__(self) -> None:
        if self.granularity not in ("per_channel", "per_tensor"):
            raise ValueError(f"fp8 granularity must be 'per_channel' or 'per_tensor', got {self.granularity!r}")
        if self.activation_scheme not in ("dynamic", "none"):
            raise ValueError(f"fp8 activation_scheme must be 'dynamic' or 'none', got {self.activation_scheme!r}")
        if self.method not in FP8_METHODS:
            raise ValueError(f"fp8 method must be one of {FP8_METHODS}, got {self.method!r}")

    @property
    def name(self) -> str:
        return "fp8" + ("" if self.method == "rtn" else f"_{self.method}")


@dataclass(frozen=True)
class Int8WeightOnlyConfig:
    """Symmetric int8 weights, one fp32 scale per output channel; activations stay in their dtype."""

    @property
    def name(self) -> str:
        return "int8_wo"


@dataclass(frozen=True)
class Int4WeightOnlyConfig:
    """Asymmetric int4 weights in groups of `group_size` input channels (a scale and a zero point per
    group and output channel), two per byte. `method` picks how the integers are chosen: round to
    nearest, AWQ (activation-aware scales) or GPTQ (Hessian-based error feedback); the last two need
    calibration data."""

    group_size: int = 128
    method: str = "rtn"

    def __post_init__(self) -> None:
        if self.group_size not in GROUP_SIZES:
            raise ValueError(f"int4 group_size must be one of {GROUP_SIZES}, got {self.group_size}")
        if self.method not in INT4_METHODS:
            raise ValueError(f"int4 method must be one of {INT4_METHODS}, got {self.method!r}")

    @property
    def name(self) -> str:
        return f"int4_g{self.group_size}" + ("" if self.method == "rtn" else f"_{self.method}")


QuantConfig = Fp8Config | Int8WeightOnlyConfig | Int4WeightOnlyConfig

KINDS: dict[str, type] = {"fp8": Fp8Config, "int8_wo": Int8WeightOnlyConfig, "int4_wo": Int4WeightOnlyConfig}


def config_from_dict(kind: str, values: dict[str, Any] | None = None) -> QuantConfig:
    """`("int4_wo", {"group_size": 64})` -> Int4WeightOnlyConfig(group_size=64); raises ValueError naming the problem."""
    if kind not in KINDS:
        raise ValueError(f"unknown quantization kind {kind!r} (known: {', '.join(KINDS)})")
    cls = KINDS[kind]
    try:
        return cls(**(values or {}))
    except TypeError as e:
        raise ValueError(f"{kind}: {e}") from None


def config_to_dict(cfg: QuantConfig) -> dict[str, Any]:
    kind = next(k for k, c in KINDS.items() if isinstance(cfg, c))
    return {"kind": kind, **asdict(cfg)}
