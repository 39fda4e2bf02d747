"""match_rope: transformers' RoPE spellings -> autodeploy::rope on q and k together.

    before:  q [b,n,s,d] ─┬─ mul(cos.unsqueeze(1)) ──────────────────────────┐
                          └─ slice ─ slice ─ neg ─ cat (rotate_half) ─ mul(sin) ─ add ─ q_rot
             (the same for k, sharing the unsqueezed cos / sin)
    after:   q ─ transpose(1,2) ─┐
             k ─ transpose(1,2) ─ autodeploy.rope(q, k, cos, sin, interleaved) ─ transpose(1,2) ─ q_rot, k_rot

The op takes bsnd (the layout of autodeploy::attention and the KV cache); the transposes it adds
cancel against those of the attention rewrite (patterns/layout.py), leaving
view ─ rope ─ attention. Spellings: patterns/rope.py.
"""

from __future__ import annotations

from autodeploy.patterns.layout import LAYOUT_PATTERNS
from autodeploy.patterns.registry import apply_patterns
from autodeploy.patterns.rope import ROPE_PATTERNS
from autodeploy.transforms.pipeline import Stage, TransformInfo, register


def _expects_rope(cfg) -> bool:
    if cfg is None or getattr(cfg, "model_type", "") in ("gpt2", "gpt_bigcode", "opt", "bloom", "mpt"):
        return False
    return any(getattr(cfg, a, None) is not None for a in ("rope_parameters", "rope_theta", "rope_scaling"))


@register(Stage.CANONICALIZE)
def apply(gm, ctx, cfg) -> TransformInfo:
    matches = apply_patterns(gm, ROPE_PATTERNS, context=ctx)
    info = TransformInfo(matches=len(matches), changed=bool(matches))
    info.details = {p.name: sum(m.pattern is p for m in matches) for p in ROPE_PATTERNS}
    if matches:
        info.details["transposes_cancelled"] = len(apply_patterns(gm, LAYOUT_PATTERNS))
    elif _expects_rope(ctx.hf_config):
        info.warning = (
            "no RoPE spelling matched although the config has rotary embeddings; q/k rotation stays plain aten ops"
        )
    return info
