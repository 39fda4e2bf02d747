"""Build the model on the meta device for export, and materialize its weights after the transforms.

    build_meta_model(src, recipe)         -> nn.Module, parameters on meta, buffers real (RoPE tables)
    materialize_state(src, recipe, device) -> {param name: tensor}: the checkpoint read once
                                              (safetensors / GGUF through transformers, or random)

Checkpoint reading goes through transformers' own loader so its key renames and fused-expert
conversions apply; the loaded tensors are then moved into the graph without another copy.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import torch
from torch import nn

from autodeploy.errors import SourceError, UnsupportedModelError
from autodeploy.models.source import ModelSource

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def torch_dtype(name: str) -> torch.dtype:
    return DTYPES[name]


def _model_kwargs(recipe) -> dict[str, Any]:
    kw: dict[str, Any] = {"dtype": torch_dtype(recipe.runtime.dtype)}
    if recipe.model.attn_implementation != "auto":
        kw["attn_implementation"] = recipe.model.attn_implementation
    return kw


def causal_lm_class(config) -> type[nn.Module]:
    from transformers import AutoModelForCausalLM

    mapping = AutoModelForCausalLM._model_mapping
    name = f"{type(config).__name__} (model_type '{config.model_type}')"
    if getattr(config, "is_encoder_decoder", False):
        raise UnsupportedModelError(f"{name} is an encoder-decoder model, not a causal LM")
    if getattr(config, "is_decoder", None) is False:
        # BERT-style configs map to a *LMHeadModel, but attend bidirectionally unless is_decoder is set
        raise UnsupportedModelError(f"{name} is an encoder with bidirectional attention (is_decoder is false), not a causal LM")
    try:
        return mapping[type(config)]
    except KeyError:
        arch = ", ".join(getattr(config, "architectures", None) or []) or type(config).__name__
        raise UnsupportedModelError(
            f"architecture {arch} (model_type '{config.model_type}') is not a causal LM in transformers "
            "(autodeploy handles *ForCausalLM models)"
        ) from None


def _is_moe_class(cls) -> bool:
    try:
        return bool(cls._can_set_experts_implementation())
    except Exception:
        return False


def from_config(src: ModelSource, recipe, **extra) -> nn.Module:
    cls = causal_lm_class(src.config)
    kw = _model_kwargs(recipe) | extra
    if _is_moe_class(cls):
        kw["experts_implementation"] = recipe.model.experts_implementation
    try:
        return cls._from_config(src.config, **kw)
    except (ValueError, ImportError) as e:
        raise UnsupportedModelError(f"{cls.__name__} cannot be built: {str(e).splitlines()[0]}") from None


def build_meta_model(src: ModelSource, recipe) -> nn.Module:
    """Parameters on meta (no memory); buffers such as RoPE frequency tables are real, on the CPU."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        model = from_config(src, recipe)
    # Persistent buffers come from the checkpoint (e.g. DeepSeek-V3's router score bias): they go to
    # meta like the parameters. Non-persistent ones (RoPE tables) are computed here and stay real.
    for mod in model.modules():
        for name, buf in list(mod._buffers.items()):
            if buf is not None and name not in mod._non_persistent_buffers_set:
                mod._buffers[name] = buf.to("meta")
    return model.eval()


@contextlib.contextmanager
def _seeded(seed: int):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def materialize_model(src: ModelSource, recipe, device: str | torch.device) -> nn.Module:
    """The model with real weights on `device`: the checkpoint read once, or random weights for random: sources."""
    device = torch.device(device)
    if src.kind == "random":
        # Random init directly on the target device: an 8B shape initializes in seconds on a GPU.
        with _seeded(recipe.runtime.seed), device:
            model = from_config(src, recipe)
        return model.eval()
    cls = causal_lm_class(src.config)
    kw = _model_kwargs(recipe) | src.hf_kwargs()
    if _is_moe_class(cls):
        kw["experts_implementation"] = recipe.model.experts_implementation
    if src.kind != "gguf":
        kw["use_safetensors"] = True
    try:
        model = cls.from_pretrained(src.location, config=src.config, device_map=str(device), **kw)
    except OSError as e:
        raise SourceError(f"{src.spec}: cannot load weights: {str(e).splitlines()[0]}") from None
    return model.eval()


def materialize_state(src: ModelSource, recipe, device) -> dict[str, torch.Tensor]:
    """Every parameter and buffer by name (tied weights appear under each of their names)."""
    from autodeploy.quantization.checkpoint import quant_method

    if src.kind != "random" and quant_method(src.config) is not None:  # GPTQ / AWQ / FP8: read as stored
        from autodeploy.quantization.checkpoint import read_state

        return read_state(src, recipe, device)
    model = materialize_model(src, recipe, device)
    state = {n: p.detach() for n, p in model.named_parameters(remove_duplicate=False)}
    state.update({n: b for n, b in model.named_buffers(remove_duplicate=False)})
    return state


def load_tokenizer(src: ModelSource):
    """The source's tokenizer, or None (named random shapes have none)."""
    if not src.has_tokenizer or src.location is None:
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(src.location, **src.hf_kwargs())
    except Exception as e:  # a model without tokenizer files still runs on token ids
        log.warning("no tokenizer for %s: %s", src.spec, str(e).splitlines()[0])
        return None
