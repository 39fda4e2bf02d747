"""Which architectures the coverage run covers: every AutoModelForCausalLM entry, some listed as skipped.

    causal_lm_archs() -> [Arch("llama", "LlamaForCausalLM", skip=None), ...,
                          Arch("bart", "BartForCausalLM", skip="encoder-decoder: ...")]

Skipped (listed with the reason, never run) are architectures that are not decoder-only LMs or
cannot fit the paged-KV design:

    encoder-decoder      the config says is_encoder_decoder (the *ForCausalLM is the decoder half)
    multimodal           a *ForConditionalGeneration class, a composite config with vision / audio parts,
                         or a config declaring an image placeholder token
    bidirectional        BERT-style encoders, causal only when configured as a decoder; XLNet
    not standalone       drafters for speculative decoding (need the target model)
    recurrent            state-space / linear-attention / convolution layers: a fixed-size state per
                         sequence, not a growing KV cache (named by the config's layer_types, or
                         in STATEFUL for families that do not list their layer kinds)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

# Families whose recurrence the config does not spell out in layer_types.
STATEFUL: dict[str, str] = {
    "mamba2": "Mamba2 selective-scan state",
    "rwkv": "RWKV time-mix recurrence",
    "xlstm": "xLSTM recurrent cells",
    "zamba": "Mamba layers with a shared attention block",
    "recurrent_gemma": "RG-LRU recurrence",
    # checkpoints mix short-convolution layers with attention; the class defaults list none
    "lfm2": "LFM2 short-convolution layers", "lfm2_moe": "LFM2 short-convolution layers",
}
# Listed as *ForCausalLM but not standalone language models.
NOT_STANDALONE: dict[str, str] = {
    "gemma4_assistant": "a speculative-decoding drafter that reads the target model's hidden states",
    "gemma4_unified_assistant": "a speculative-decoding drafter that reads the target model's hidden states",
}
# Decoder halves of encoder-decoder models whose config does not set is_encoder_decoder.
DECODER_HALF: dict[str, str] = {
    "trocr": "the text decoder of TrOCR's VisionEncoderDecoder (cross-attends to image features)",
}
# Listed as *ForCausalLM but not causal over the prompt.
NOT_CAUSAL: dict[str, str] = {
    "xlnet": "permutation LM: attends over the whole prefix; generate appends a masked dummy token per step",
}
# layer_types values that name a layer without a KV cache
_STATE_LAYER_WORDS = ("linear", "conv", "mamba", "hybrid", "recurrent", "ssm", "rnn")
_MULTIMODAL_PARTS = ("vision", "audio", "image", "vq", "speech", "text_encoder", "depth_decoder")
_IMAGE_TOKEN_FIELDS = ("image_token_id", "image_token_index")  # a placeholder token for image features


@dataclass
class Arch:
    model_type: str
    class_name: str
    skip: str | None = None  # why it is listed but not run


def _own_fields(cls) -> set[str]:
    from transformers import PretrainedConfig

    if not dataclasses.is_dataclass(cls):
        import inspect

        return set(inspect.signature(cls.__init__).parameters) - set(inspect.signature(PretrainedConfig.__init__).parameters)
    base = {f.name for f in dataclasses.fields(PretrainedConfig)} if dataclasses.is_dataclass(PretrainedConfig) else set()
    return {f.name for f in dataclasses.fields(cls)} - base


def _default_config(cls):
    try:
        return cls()
    except Exception:  # a class whose own defaults do not validate: judged by its fields alone
        return None


def skip_reason(model_type: str, class_name: str) -> str | None:
    """Why `model_type` is not run (None: it is a decoder-only LM the design covers)."""
    from transformers import CONFIG_MAPPING

    cls = CONFIG_MAPPING[model_type]
    cfg = _default_config(cls)
    if cfg is not None and getattr(cfg, "is_encoder_decoder", False):
        return f"encoder-decoder: {class_name} is the decoder half of a sequence-to-sequence model"
    if model_type in DECODER_HALF:
        return f"encoder-decoder: {DECODER_HALF[model_type]}"
    parts = [name for name in (getattr(cls, "sub_configs", None) or {}) if any(w in name for w in _MULTIMODAL_PARTS)]
    parts += [name for name in _IMAGE_TOKEN_FIELDS if name in _own_fields(cls)]
    if class_name.endswith("ForConditionalGeneration") or parts:
        what = ", ".join(sorted(parts)) or "a ForConditionalGeneration class"
        return f"multimodal: {what}; text-only variants are listed under their own model_type"
    if model_type in NOT_STANDALONE:
        return f"not standalone: {NOT_STANDALONE[model_type]}"
    if model_type in NOT_CAUSAL:
        return f"bidirectional ({NOT_CAUSAL[model_type]}): not a decoder-only LM"
    if {"is_decoder", "add_cross_attention"} <= _own_fields(cls):
        return "bidirectional encoder (BERT-style): causal only as a configured decoder, not a decoder-only LM"
    layer_types = _layer_types(cfg)
    stateful = sorted({t for t in layer_types if any(w in t for w in _STATE_LAYER_WORDS)})
    if stateful or model_type in STATEFUL:
        what = f"{'/'.join(stateful)} layers" if stateful else STATEFUL[model_type]
        return (f"recurrent ({what}): a fixed-size state per sequence, not a growing KV cache; "
                "outside the paged-KV design")
    return None


def _layer_types(cfg) -> list[str]:
    try:
        types = getattr(cfg, "layer_types", None) if cfg is not None else None
    except Exception:  # heterogeneous configs guard their per-layer attributes
        return []
    return [t for t in types if isinstance(t, str)] if isinstance(types, (list, tuple)) else []


def causal_lm_archs(only: list[str] | None = None) -> list[Arch]:
    """AutoModelForCausalLM's architectures (model_type order), each with its skip reason; `only` filters."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    from autodeploy.errors import UnsupportedModelError

    names = dict(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)
    if only is not None:
        unknown = [m for m in only if m not in names]
        if unknown:
            raise UnsupportedModelError(
                f"not a *ForCausalLM model_type of transformers: {', '.join(unknown)} (e.g. llama, gpt2, mixtral)"
            )
        names = {m: names[m] for m in only}
    out = []
    for model_type, class_name in names.items():
        out.append(Arch(model_type, class_name, skip_reason(model_type, class_name)))
    return out
