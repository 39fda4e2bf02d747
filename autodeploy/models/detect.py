"""Architecture detection: what kind of model this is, from its config, checked against the graph.

`detect_architecture(config, gm)` returns an ArchInfo; `autodeploy inspect` prints it. Each fact
the config states and the exported graph can show (attention sites per layer, heads, norm kind,
gated MLP, MoE routing, RoPE theta, sinks, softcaps) is checked against the graph; a mismatch
becomes a line in `ArchInfo.warnings` (a config the graph does not follow is a model the
transforms would misread).
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
    if not params and theta is None:  # learned or no positions (GPT-2, OPT): no RoPE
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
    # Gemma2/3 name it hidden_activation; GPT-2 activation_function
    act = str(_first(cfg, "hidden_activation", "hidden_act", "activation_function", default="?"))
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
        info.warnings = check_against_graph(info, cfg, gm)
    return info


def _expect(warnings: list[str], ok: bool, what: str) -> None:
    if not ok:
        warnings.append(what)


def check_against_graph(info: ArchInfo, cfg, gm: fx.GraphModule) -> list[str]:
    """The config's claims that the graph contradicts, one line each (empty when all agree)."""
    from autodeploy.models.graph_facts import graph_facts

    f = graph_facts(gm)
    w: list[str] = []
    L = info.num_layers
    _expect(w, f.attention_sites == L, f"config has {L} layers but the graph has {f.attention_sites} attention sites")
    _expect(w, f.q_heads == {info.num_heads}, f"config has {info.num_heads} heads, graph queries have {sorted(f.q_heads, key=str)}")
    if info.attention_kind != "MLA":
        _expect(w, f.kv_heads == {info.num_kv_heads},
                f"config has {info.num_kv_heads} KV heads ({info.attention_kind}), graph keys have {sorted(f.kv_heads, key=str)}")
    else:
        v_dim = int(getattr(cfg, "v_head_dim", 0) or 0)
        _expect(w, not v_dim or f.v_head_dims == {v_dim}, f"MLA value head dim {v_dim} not seen in graph ({sorted(f.v_head_dims, key=str)})")
    _expect(w, f.q_head_dims == {info.head_dim}, f"config head_dim {info.head_dim}, graph queries have {sorted(f.q_head_dims, key=str)}")
    n_norms = 2 * L + 1  # two per layer and the final one
    if info.norm == "layernorm":
        _expect(w, f.layernorm_sites >= n_norms and f.rmsnorm_sites == 0,
                f"config implies LayerNorm, graph has {f.layernorm_sites} layer_norm and {f.rmsnorm_sites} rsqrt")
    else:
        _expect(w, f.rmsnorm_sites >= n_norms and f.layernorm_sites == 0,
                f"config implies RMSNorm, graph has {f.rmsnorm_sites} rsqrt and {f.layernorm_sites} layer_norm")
        gemma_style = f.one_plus_weight_sites >= n_norms
        _expect(w, gemma_style == (info.norm == "rmsnorm(1+w)"),
                f"norm is {info.norm} but the graph has {f.one_plus_weight_sites} `1 + weight` scales")
    if info.mlp.startswith("gated"):
        _expect(w, f.gate_sites >= L, f"config implies a gated MLP, graph has {f.gate_sites} activation-times-tensor sites for {L} layers")
    else:
        _expect(w, f.gate_sites == 0, f"config implies a plain MLP, graph has {f.gate_sites} gated activations")
    if info.moe:
        k, e = info.moe["top_k"], info.moe["experts"]
        _expect(w, k in f.topk_ks, f"config routes top-{k}, graph topk calls use k={f.topk_ks}")
        _expect(w, e in f.expert_dims, f"config has {e} experts, no [experts, ...] weight of that size in the graph")
    else:
        _expect(w, not f.topk_ks, f"config has no MoE, graph has {len(f.topk_ks)} topk calls")
    _expect(w, f.has_rotary == (info.rope is not None),
            f"RoPE {info.rope or 'absent'} in config, cos/sin {'present' if f.has_rotary else 'absent'} in graph")
    if info.rope == "default" and info.rope_theta and f.rope_thetas:
        _expect(w, any(abs(t / info.rope_theta - 1) < 1e-3 for t in f.rope_thetas),
                f"config rope_theta {info.rope_theta:g}, graph inv_freq implies {[round(t) for t in f.rope_thetas]}")
    _expect(w, (f.sink_sites == L) if info.attention_sinks else f.sink_sites == 0,
            f"attention sinks {'on' if info.attention_sinks else 'off'} in config, {f.sink_sites} sink concats in graph")
    _expect(w, (f.attn_softcap_sites == L) if info.attn_softcap else f.attn_softcap_sites == 0,
            f"attention softcap {info.attn_softcap} in config, {f.attn_softcap_sites} tanh-capped attention sites in graph")
    _expect(w, f.logit_softcap == bool(info.logit_softcap),
            f"logit softcap {info.logit_softcap} in config, {'a' if f.logit_softcap else 'no'} tanh before the output in graph")
    return w
