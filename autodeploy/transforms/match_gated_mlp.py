"""match_gated_mlp: the activation of a gated MLP -> autodeploy::gated_mlp_act; the linears stay.

    before:  x ─ linear(w_gate) ─ silu ─┐
             x ─ linear(w_up) ─────────mul ─ linear(w_down) ─ y
    after:   x ─ linear(w_gate) ─┐
             x ─ linear(w_up) ───autodeploy.gated_mlp_act(gate, up, "silu") ─ linear(w_down) ─ y

Phi3's fused gate_up_proj: linear ─ chunk(2) ─ [gate, up] ─ the same rewrite on the two chunks.
The projections stay aten.linear so GEMM fusion, sharding and quantization see them. MoE expert
MLPs are left to match_moe.
"""

from __future__ import annotations

from autodeploy.patterns.gated_mlp import GATED_MLP_PATTERNS
from autodeploy.patterns.registry import apply_patterns
from autodeploy.transforms.pipeline import Stage, TransformInfo, register


def _expects_gated_mlp(cfg) -> bool:
    """Dense gated MLPs: every config with an intermediate size except GPT-2 style and pure-MoE models."""
    if cfg is None or not getattr(cfg, "intermediate_size", None):
        return False
    if getattr(cfg, "model_type", "") == "gpt_oss":  # every layer is MoE
        return False
    experts = getattr(cfg, "num_local_experts", None) or getattr(cfg, "num_experts", None)
    dense_layers = getattr(cfg, "first_k_dense_replace", 0) or getattr(cfg, "mlp_only_layers", None)
    return not experts or bool(dense_layers)


@register(Stage.CANONICALIZE)
def apply(gm, ctx, cfg) -> TransformInfo:
    matches = apply_patterns(gm, GATED_MLP_PATTERNS, context=ctx)
    info = TransformInfo(matches=len(matches), changed=bool(matches))
    info.details = {p.name: sum(m.pattern is p for m in matches) for p in GATED_MLP_PATTERNS}
    if not matches and _expects_gated_mlp(ctx.hf_config):
        info.warning = "no gated MLP (act(gate) * up over linear projections) matched; the MLPs stay plain aten ops"
    return info
