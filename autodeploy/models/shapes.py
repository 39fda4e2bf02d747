"""Named model shapes for `random:<name>` sources: benchmark on the GPU without any weights.

Each entry is a plain transformers config dict; the shapes match the published models'
configs (layers, widths, heads, vocab, RoPE), with random weights.
"""

from __future__ import annotations

from typing import Any

_LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 32.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}

NAMED_SHAPES: dict[str, dict[str, Any]] = {
    # Llama-3.2-1B with untied embeddings: 3.00 GB of bf16 parameters.
    "llama-3.2-1b": dict(
        model_type="llama", vocab_size=128256, hidden_size=2048, intermediate_size=8192,
        num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8, head_dim=64,
        max_position_embeddings=131072, rms_norm_eps=1e-5, tie_word_embeddings=False,
        rope_parameters={"rope_theta": 500000.0, **_LLAMA3_ROPE}, bos_token_id=128000, eos_token_id=128001,
    ),
    # Llama-3.1-8B: 16.06 GB of bf16 parameters.
    "llama-3.1-8b": dict(
        model_type="llama", vocab_size=128256, hidden_size=4096, intermediate_size=14336,
        num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
        max_position_embeddings=131072, rms_norm_eps=1e-5, tie_word_embeddings=False,
        rope_parameters={"rope_theta": 500000.0, **{**_LLAMA3_ROPE, "factor": 8.0}},
        bos_token_id=128000, eos_token_id=128001,
    ),
    # SmolLM2-135M: the example model's shape.
    "smollm2-135m": dict(
        model_type="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536,
        num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, head_dim=64,
        max_position_embeddings=8192, rms_norm_eps=1e-5, tie_word_embeddings=True,
        rope_parameters={"rope_theta": 100000.0, "rope_type": "default"}, bos_token_id=1, eos_token_id=2,
    ),
}


def named_shape_config(name: str):
    """A transformers config for a named shape, or None when `name` is not one."""
    from transformers import AutoConfig

    spec = NAMED_SHAPES.get(name.lower())
    if spec is None:
        return None
    spec = dict(spec)
    return AutoConfig.for_model(spec.pop("model_type"), **spec)
