"""Tiny random-init configs of every architecture the tests cover (1-2 layers, hidden 64).

`tiny_config(name)` returns a transformers config; `save_tiny(name, dir)` writes a seeded
random model with `save_pretrained` (safetensors) so tests go through the real loading path.
"""

from __future__ import annotations

from pathlib import Path

import torch

COMMON = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)

TINY: dict[str, tuple[str, dict]] = {
    "llama": ("LlamaConfig", dict(COMMON)),
    "mistral": ("MistralConfig", dict(COMMON, sliding_window=None)),
    "qwen2": ("Qwen2Config", dict(COMMON)),
    "qwen3": ("Qwen3Config", dict(COMMON, head_dim=16)),
    "phi3": ("Phi3Config", dict(COMMON, pad_token_id=0, bos_token_id=1, eos_token_id=2)),
    "gemma": ("GemmaConfig", dict(COMMON, head_dim=16)),
    "gemma2": ("Gemma2Config", dict(COMMON, head_dim=16, sliding_window=8)),
    "gemma3_text": ("Gemma3TextConfig", dict(COMMON, head_dim=16, sliding_window=8,
                                              layer_types=["sliding_attention", "full_attention"])),
    "gpt2": ("GPT2Config", dict(vocab_size=256, n_embd=64, n_layer=2, n_head=4, n_positions=512, bos_token_id=1, eos_token_id=2)),
    "mixtral": ("MixtralConfig", dict(COMMON, num_local_experts=4, num_experts_per_tok=2)),
    "qwen3_moe": ("Qwen3MoeConfig", dict(COMMON, head_dim=16, num_experts=4, num_experts_per_tok=2,
                                          moe_intermediate_size=32, decoder_sparse_step=1, mlp_only_layers=[])),
    "deepseek_v3": ("DeepseekV3Config", dict(COMMON, n_routed_experts=8, num_experts_per_tok=2, n_group=2,
                                              topk_group=1, n_shared_experts=1, moe_intermediate_size=32,
                                              first_k_dense_replace=1, kv_lora_rank=16, q_lora_rank=32,
                                              qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16,
                                              num_key_value_heads=4)),
    "gpt_oss": ("GptOssConfig", dict(COMMON, head_dim=16, num_local_experts=4, num_experts_per_tok=2,
                                      sliding_window=8, layer_types=["sliding_attention", "full_attention"])),
}

ARCHS = list(TINY)


def tiny_config(name: str):
    import transformers

    cls_name, kw = TINY[name]
    return getattr(transformers, cls_name)(**kw)


def tiny_model(name: str, seed: int = 0, dtype=torch.float32):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_config(name), dtype=dtype).eval()


def save_tiny(name: str, directory: str | Path, seed: int = 0) -> Path:
    directory = Path(directory)
    model = tiny_model(name, seed)
    model.save_pretrained(directory, safe_serialization=True)
    return directory

# Qwen2-MoE (shared expert with a sigmoid gate, unnormalized top-k): the MoE tests use it; it is
# not one of the foundation's 13 ARCHS.
TINY["qwen2_moe"] = ("Qwen2MoeConfig", dict(COMMON, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                                             shared_expert_intermediate_size=64, decoder_sparse_step=1,
                                             mlp_only_layers=[]))
