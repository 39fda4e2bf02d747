"""Which layers a quantize transform takes, and with which settings.

Layers are named by module path as in the checkpoint (`model.layers.0.self_attn.q_proj`). A recipe
chooses them with globs:

    include:   ["*"]                       candidates (fnmatch over the module name)
    exclude:   ["*lm_head"]                never quantized by this transform
    overrides: {"*.mlp.down_proj": {group_size: 64}, "model.layers.0.*": {skip: true}}

The first override whose glob matches wins; `skip: true` leaves the layer as it is (another
quantize transform may still take it), other keys replace this transform's settings for the layer.
A sensitivity plan (gm.meta["quantization_plan"], see sensitivity.py) adds the layers it keeps in
higher precision.
"""

from __future__ import annotations

import fnmatch
from typing import Any, Callable

from pydantic import Field

from autodeploy.quantization.config import QuantConfig
from autodeploy.transforms.pipeline import TransformConfig


class SelectionFields(TransformConfig):
    """Fields every quantize transform shares (its own quantization settings come on top)."""

    enabled: bool = Field(False, description="Run this transform (off unless the recipe asks for it).")
    include: list[str] = Field(["*"], description="Globs over module names of the layers to quantize.")
    exclude: list[str] = Field(["*lm_head"], description="Globs over module names never quantized here.")
    overrides: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Per-layer settings by module-name glob (first match wins); {skip: true} leaves the layer as is.",
    )

    fuse_shared_input: bool = Field(
        True, description="Linears reading one input with one config become one quantized GEMM and a split (q/k/v, gate/up)."
    )

    def adjust(self, qcfg: QuantConfig, n: int, k: int) -> QuantConfig:
        """A layer's config fitted to its weight shape [n, k] (the int4 transform shrinks groups)."""
        return qcfg


def matches(name: str, globs: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, g) for g in globs)


def layer_config(
    name: str, cfg: SelectionFields, build: Callable[[dict[str, Any]], QuantConfig], keep: set[str] = frozenset()
) -> QuantConfig | None:
    """The quantization config of module `name` under this transform, or None when it is not taken."""
    if name in keep or not matches(name, cfg.include) or matches(name, cfg.exclude):
        return None
    for glob, values in cfg.overrides.items():
        if fnmatch.fnmatchcase(name, glob):
            if values.get("skip", False):
                return None
            return build({k: v for k, v in values.items() if k != "skip"})
    return build({})


def check_overrides(overrides: dict[str, dict[str, Any]], build: Callable[[dict[str, Any]], QuantConfig]) -> None:
    """Validate every override once, at recipe load (a bad value names its glob)."""
    for glob, values in overrides.items():
        if not isinstance(values, dict):
            raise ValueError(f"override {glob!r} must be a mapping of settings")
        try:
            build({k: v for k, v in values.items() if k != "skip"})
        except (ValueError, TypeError) as e:
            raise ValueError(f"override {glob!r}: {e}") from None
