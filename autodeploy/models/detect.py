"""Architecture detection: what kind of model this is, from its config, checked against the graph.

`detect_architecture(config, gm)` returns an ArchInfo; `autodeploy inspect` prints it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from torch import fx


@dataclass
class ArchInfo:
    family: str  # HF model_type, e.g. "llama"
    architecture: str  # class name, e.g. "LlamaForCausalLM"
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    attention_kind: str  # MHA / GQA / MQA / MLA
    rope: str | None  # e.g. "default", "llama3", "yarn", None when no RoPE
    rope_theta: float | None
    norm: str  # rmsnorm / rmsnorm(1+w) / layernorm
    mlp: str  # gated / plain
    moe: dict[str, Any] | None  # {"experts": E, "top_k": k, "shared_experts": n} or None
    tied_embeddings: bool
    vocab_size: int
    sliding_window: int | None
    logit_softcap: float | None
    attn_softcap: float | None
    attention_sinks: bool
    op_histogram: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _first(cfg, *names, default=None):
    for n in names:
        v = getattr(cfg, n, None)
        if v is not None:
            return v
    return default


def _rope(cfg) -> tuple[str | None, float | None]:
    params = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    if isinstance(params, dict) and params and isinstance(next(iter(params.values())), dict) and "rope_type" not in params:
        # per-layer-type rope params (Gemma3: full_attention / sliding_attention)
        params = params.get("full_attention") or next(iter(params.values()))
    theta = params.get("rope_theta") if isinstance(params, dict) else None
    theta = theta if theta is not None else getattr(cfg, "rope_theta", None)
    if cfg.model_type in ("gpt2",):
        return None, None
    kind = params.get("rope_type", params.get("type", "default")) if isinstance(params, dict) else "default"
    return kind, float(theta) if theta is not None else None


def _norm(cfg) -> str:
    mt = cfg.model_type
    if mt.startswith("gemma"):
        return "rmsnorm(1+w)"
    if mt in ("gpt2", "gpt_neox", "gptj", "phi", "falcon", "stablelm", "starcoder2", "opt", "bloom"):
        return "layernorm"
    return "rmsnorm"


def _moe(cfg) -> dict[str, Any] | None:
    experts = _first(cfg, "num_local_experts", "num_experts", "n_routed_experts")
    if not experts:
        return None
    top_k = _first(cfg, "num_experts_per_tok", "num_experts_per_token", "moe_topk", "top_k", default=None)
    shared = _first(cfg, "n_shared_experts", "num_shared_experts", default=0) or 0
    if not shared and getattr(cfg, "shared_expert_intermediate_size", 0):
        shared = 1
    return {"experts": int(experts), "top_k": int(top_k) if top_k else None, "shared_experts": int(shared)}


def detect_architecture(config, gm: fx.GraphModule | None = None) -> ArchInfo:
    from autodeploy.graph import op_histogram

    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = int(_first(cfg, "num_attention_heads", "n_head"))
    kv = int(_first(cfg, "num_key_value_heads", "num_kv_heads", default=heads) or heads)
    hidden = int(_first(cfg, "hidden_size", "n_embd"))
    head_dim = int(_first(cfg, "head_dim", default=hidden // heads) or hidden // heads)
    if getattr(cfg, "kv_lora_rank", None):
        kind = "MLA"
        head_dim = int(getattr(cfg, "qk_nope_head_dim", 0) + getattr(cfg, "qk_rope_head_dim", 0)) or head_dim
    elif kv == heads:
        kind = "MHA"
    elif kv == 1:
        kind = "MQA"
    else:
        kind = "GQA"
    rope, theta = _rope(cfg)
    archs = getattr(config, "architectures", None) or []
    window = getattr(cfg, "sliding_window", None)
    layer_types = getattr(cfg, "layer_types", None)
    if layer_types is not None and "sliding_attention" not in layer_types:
        window = None
    act = str(_first(cfg, "hidden_act", "activation_function", default=""))
    gated = cfg.model_type not in ("gpt2", "gpt_neox", "gptj", "phi", "falcon", "opt", "bloom", "starcoder2")
    info = ArchInfo(
        family=cfg.model_type,
        architecture=archs[0] if archs else type(config).__name__.replace("Config", "ForCausalLM"),
        num_layers=int(_first(cfg, "num_hidden_layers", "n_layer")),
        hidden_size=hidden,
        num_heads=heads,
        num_kv_heads=kv,
        head_dim=head_dim,
        attention_kind=kind,
        rope=rope,
        rope_theta=theta,
        norm=_norm(cfg),
        mlp=f"gated({act})" if gated else f"plain({act})",
        moe=_moe(cfg),
        tied_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
        vocab_size=int(cfg.vocab_size),
        sliding_window=int(window) if window else None,
        logit_softcap=_first(cfg, "final_logit_softcapping"),
        attn_softcap=_first(cfg, "attn_logit_softcapping"),
        attention_sinks=cfg.model_type in ("gpt_oss",),
    )
    if gm is not None:
        info.op_histogram = op_histogram(gm)
    return info
