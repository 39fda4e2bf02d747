"""match_rmsnorm: transformers' RMSNorm spellings -> autodeploy::rmsnorm.

    before:  x ─ to(f32) ─┬─ pow(2) ─ mean(-1) ─ add(eps) ─ rsqrt ─┐
                          └────────────────────────────────────── mul ─ to(x.dtype) ─ mul(weight) ─ y
             (Gemma: ... ─ mul ─ mul(1 + weight.float()) ─ type_as(x) ─ y)
    after:   x ─ autodeploy.rmsnorm(x, weight, eps, add_unit_offset) ─ y

Covers the decoder norms, the final norm, Qwen3 / Gemma3 q/k head norms, Gemma2/3 pre/post
feed-forward norms and DeepSeek-V3's q/kv LoRA norms: every spelling in patterns/rmsnorm.py.
"""

from __future__ import annotations

from autodeploy.patterns.registry import apply_patterns
from autodeploy.patterns.rmsnorm import RMSNORM_PATTERNS
from autodeploy.transforms.pipeline import Stage, TransformInfo, register


@register(Stage.CANONICALIZE)
def apply(gm, ctx, cfg) -> TransformInfo:
    matches = apply_patterns(gm, RMSNORM_PATTERNS, context=ctx)
    info = TransformInfo(matches=len(matches), changed=bool(matches))
    info.details = {p.name: sum(m.pattern is p for m in matches) for p in RMSNORM_PATTERNS}
    if not matches and getattr(ctx.hf_config, "rms_norm_eps", None) is not None:
        info.warning = (
            "no RMSNorm spelling matched although the config sets rms_norm_eps; the norms stay plain aten ops"
        )
    return info
