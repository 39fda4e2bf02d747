"""A tiny random config for any transformers *ForCausalLM architecture, derived from its defaults.

    tiny_config("llama")  ->  LlamaConfig(hidden 64, 2 layers, 4 heads / 2 KV heads, vocab 256, ...)

Every architecture goes through the same steps; only the declarative tables below know field names:

    1. the config class's defaults (one default instance, after its own __post_init__ derivations)
    2. ROLES: each size role (hidden, layers, heads, ...) set on every field that plays it
    3. AT_MOST / SMALL: small values for the MoE / MLA / window fields the class has
    4. per-layer lists (layer_types, no_rope_layers, ...) cut down to a few layers that keep every
       distinct kind of layer (Gemma3: one sliding, one full), the layer count set to match
    5. special token ids beyond the tiny vocabulary folded into it
    6. sub-configs (DBRX's attn_config / ffn_config) shrunk the same way

A field is only set where the class has it and its default is not None: None usually switches a
feature off (DeepSeek-V2-Lite's q_lora_rank), and the tiny model keeps the architecture's choices.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

from autodeploy.errors import UnsupportedModelError

# role -> (tiny value, field names that play the role across families)
ROLES: dict[str, tuple[int, tuple[str, ...]]] = {
    "vocab": (256, ("vocab_size",)),
    "hidden": (64, ("hidden_size", "n_embd", "d_model", "embed_dim", "dim", "hidden_dim", "model_dim")),
    "layers": (2, ("num_hidden_layers", "n_layer", "num_layers", "n_layers")),
    "heads": (4, ("num_attention_heads", "n_head", "num_heads", "n_heads")),
    "kv_heads": (2, ("num_key_value_heads", "num_kv_heads", "n_kv_heads", "kv_n_heads", "multi_query_group_num")),
    "head_dim": (16, ("head_dim", "kv_channels")),
    "ffn": (128, ("intermediate_size", "n_inner", "ffn_dim", "ffn_hidden_size", "inner_hidden_size", "d_ff", "mlp_dim")),
    "positions": (512, ("max_position_embeddings", "n_positions", "max_seq_len", "n_ctx", "seq_length")),
    "rotary_dim": (8, ("rotary_dim",)),
}
# Set even over a None default: None there means "derive it" (KV heads = heads), and some families
# read head_dim unconditionally; hidden / heads keeps every derivation consistent.
ALWAYS_SET = {"kv_heads", "head_dim"}

# Fields whose presence (not None) means one KV head per query head: MLA decompresses one latent
# into every head's K and V, and the modeling code does not repeat KV heads.
MHA_WHEN = ("kv_lora_rank",)

# Counts: at most this many (a family that only supports top-1 routing keeps 1); set over None too
# (DeepSeek-style configs leave the expert count None in the class and set it per checkpoint).
AT_MOST: dict[str, int] = {
    "num_local_experts": 4, "num_experts": 4, "n_routed_experts": 4, "moe_num_experts": 4,
    "num_experts_per_tok": 2, "num_experts_per_token": 2, "moe_k": 2, "moe_topk": 2, "moe_top_k": 2,
    "n_group": 2, "num_expert_group": 2, "topk_group": 1, "first_k_dense_replace": 1,
    "n_shared_experts": 1, "num_shared_experts": 1,
}

# MoE, MLA and attention-window sizes, and the few family-specific layouts: small values that keep
# the feature on (set only where the default is not None)
SMALL: dict[str, Any] = {
    "moe_intermediate_size": 32, "expert_intermediate_size": 32,
    "shared_expert_intermediate_size": 64, "moe_shared_expert_intermediate_size": 64,
    "decoder_sparse_step": 1, "moe_layer_freq": 1, "mlp_only_layers": [],
    "kv_lora_rank": 16, "q_lora_rank": 32, "qk_nope_head_dim": 16, "qk_rope_head_dim": 8, "v_head_dim": 16,
    "sliding_window": 8, "attention_chunk_size": 8,
    "attention_types": [[["global", "local"], 1]],  # GPT-Neo: (kinds, repeats) expanded to one per layer
    "num_kv_shared_layers": 0,  # Gemma3n: the last N layers reuse earlier KV; none in 2 layers
    # the *ForCausalLM runs as a causal decoder (Reformer and XLM default to their masked-LM setup)
    "is_decoder": True, "causal": True,
}
# field -> field it mirrors when the class's defaults agree (MLA families set head_dim to the RoPE part)
TIED = {"head_dim": "qk_rope_head_dim"}
MAX_LAYERS = 4  # enough for every distinct layer kind a family mixes
TOKEN_ID_SUFFIXES = ("_token_id", "_token_ids", "_token_index")


def config_class(model_type: str):
    from transformers import CONFIG_MAPPING

    try:
        return CONFIG_MAPPING[model_type]
    except KeyError:
        raise UnsupportedModelError(f"transformers has no config class for model_type '{model_type}'") from None


def _field_defaults(cls) -> dict[str, Any]:
    """Declared fields and their defaults, without running the class's derivations."""
    if dataclasses.is_dataclass(cls):
        out = {}
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                out[f.name] = f.default
            elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                out[f.name] = f.default_factory()  # type: ignore[misc]
            else:
                out[f.name] = None
        return out
    params = inspect.signature(cls.__init__).parameters
    return {n: (p.default if p.default is not inspect.Parameter.empty else None)
            for n, p in params.items() if n != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}


def _defaults(cls) -> dict[str, Any]:
    """Field -> default value, from a default instance where the class builds one (derived values set)."""
    declared = _field_defaults(cls)
    try:
        inst = cls()
    except Exception:  # some classes validate their own defaults away; the declared ones still tell the fields
        return declared
    out = {}
    for name, value in declared.items():
        try:
            out[name] = getattr(inst, name, value)
        except Exception:  # per-layer attributes of heterogeneous configs refuse a global read
            out[name] = value
    return out


def _real_name(cls, name: str, defaults: dict[str, Any]) -> str:
    """The declared field behind `name`: itself when declared, else its attribute_map target."""
    return name if name in defaults else getattr(cls, "attribute_map", {}).get(name, name)


def _num_layers(cls, defaults: dict[str, Any]) -> int | None:
    for name in ROLES["layers"][1]:
        value = defaults.get(_real_name(cls, name, defaults))
        if isinstance(value, int):
            return value
    return None


def _layer_subset(defaults: dict[str, Any], n_layers: int | None) -> tuple[list[int], list[str]]:
    """Layer indices covering every distinct value of every per-layer list, and those lists' names."""
    if not n_layers or n_layers < 2:
        return list(range(ROLES["layers"][0])), []
    # one entry per layer, with repeats: lists of distinct layer indices (full_attn_idxs) are not per-layer
    per_layer = [n for n, v in defaults.items()
                 if isinstance(v, (list, tuple)) and len(v) == n_layers and len({repr(x) for x in v}) < n_layers]
    keep: list[int] = []
    for name in per_layer:
        seen = {repr(defaults[name][i]) for i in keep}
        for i, value in enumerate(defaults[name]):
            if repr(value) not in seen and len(keep) < MAX_LAYERS:
                keep.append(i)
                seen.add(repr(value))
    for i in range(n_layers):
        if len(keep) >= ROLES["layers"][0]:
            break
        if i not in keep:
            keep.append(i)
    return sorted(keep), per_layer


def tiny_kwargs(cls) -> dict[str, Any]:
    """The constructor keyword arguments of the tiny config of config class `cls`."""
    defaults = _defaults(cls)
    kw: dict[str, Any] = {}
    for role, (value, names) in ROLES.items():
        for name in names:
            real = _real_name(cls, name, defaults)
            if real in defaults and (defaults[real] is not None or role in ALWAYS_SET):
                kw[real] = value
    if any(defaults.get(f) is not None for f in MHA_WHEN):
        for name in ROLES["kv_heads"][1]:
            real = _real_name(cls, name, defaults)
            if real in kw:
                kw[real] = ROLES["heads"][0]
    for name, cap in AT_MOST.items():
        real = _real_name(cls, name, defaults)
        if real in defaults:
            default = defaults[real]
            kw[real] = min(default, cap) if isinstance(default, int) and default > 0 else cap
    for name, value in SMALL.items():
        real = _real_name(cls, name, defaults)
        if real in defaults and defaults[real] is not None:
            kw[real] = value
    for name, source in TIED.items():
        if name in defaults and source in kw and defaults[name] is not None and defaults[name] == defaults.get(source):
            kw[name] = kw[source]
    keep, per_layer = _layer_subset(defaults, _num_layers(cls, defaults))
    if per_layer:
        for name in per_layer:
            kw[name] = [defaults[name][i] for i in keep]
        for name in ROLES["layers"][1]:
            real = _real_name(cls, name, defaults)
            if real in defaults:
                kw[real] = len(keep)
    vocab = kw.get(_real_name(cls, "vocab_size", defaults), ROLES["vocab"][0])
    for name, value in defaults.items():
        if "vocab" in name and name not in kw and isinstance(value, int) and not isinstance(value, bool) and value > vocab:
            kw[name] = vocab  # secondary vocabularies (BLT's hash n-gram tables)
        if name.endswith(TOKEN_ID_SUFFIXES):
            if isinstance(value, int) and value >= vocab:
                kw[name] = value % vocab
            elif isinstance(value, (list, tuple)) and any(isinstance(v, int) and v >= vocab for v in value):
                kw[name] = [v % vocab if isinstance(v, int) else v for v in value]
    for name, sub_cls in (getattr(cls, "sub_configs", None) or {}).items():
        if name not in defaults:
            continue
        # AutoConfig stands for "whatever the checkpoint names": the default instance's type says which
        sub_default = defaults[name]
        if isinstance(sub_default, dict) and "model_type" in sub_default:
            sub_cls = config_class(sub_default["model_type"])
        elif sub_default is not None and not isinstance(sub_default, dict):
            sub_cls = type(sub_default)
        if isinstance(sub_cls, type) and (dataclasses.is_dataclass(sub_cls) or "model_type" in vars(sub_cls)):
            kw[name] = tiny_kwargs(sub_cls)
            if getattr(sub_cls, "model_type", ""):
                kw[name]["model_type"] = sub_cls.model_type
    return kw


def tiny_config(model_type: str):
    """The tiny config of `model_type`; raises UnsupportedModelError naming why it cannot be built."""
    cls = config_class(model_type)
    kw = tiny_kwargs(cls)
    try:
        return cls(**kw)
    except Exception as e:  # strict dataclass validators raise many types; the last line says which field
        mha = {n: ROLES["heads"][0] for n in kw if n in ROLES["kv_heads"][1]}
        if mha and any(kw[n] != v for n, v in mha.items()):
            try:  # families that validate KV heads == heads (no GQA)
                return cls(**(kw | mha))
            except Exception:
                pass
        # the innermost cause is the last line (strict dataclasses wrap it in "Class validation error")
        last = next((ln.strip() for ln in reversed(str(e).splitlines()) if ln.strip()), type(e).__name__)
        raise UnsupportedModelError(f"tiny {cls.__name__} rejected: {last}") from None
