"""Tiny configs derived from the config classes' defaults: small, consistent, and faithful to the family."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from autodeploy.coverage.archs import causal_lm_archs
from autodeploy.coverage.tiny_config import tiny_config
from autodeploy.errors import UnsupportedModelError


def meta_params(cfg) -> int:
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    return sum(p.numel() for p in model.parameters())


def token_ids(cfg) -> list[int]:
    ids = []
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        v = getattr(cfg, name, None)
        ids += v if isinstance(v, list) else [v] if isinstance(v, int) else []
    return ids


@pytest.mark.parametrize("arch", ["llama", "gpt2", "falcon", "qwen3", "gemma3_text", "mixtral", "deepseek_v3", "gpt_oss"])
def test_tiny_config_is_tiny_and_consistent(arch):
    cfg = tiny_config(arch)
    assert cfg.hidden_size == 64  # GPT-2's n_embd through the attribute map
    assert 2 <= cfg.num_hidden_layers <= 4
    assert cfg.vocab_size == 256
    assert cfg.hidden_size % cfg.num_attention_heads == 0
    assert all(0 <= t < cfg.vocab_size for t in token_ids(cfg)), token_ids(cfg)
    assert meta_params(cfg) < 1_000_000


def test_layer_kinds_survive_the_cut():
    """Gemma3 alternates 5 sliding layers and 1 full one; 2 tiny layers keep one of each."""
    cfg = tiny_config("gemma3_text")
    assert sorted(cfg.layer_types) == ["full_attention", "sliding_attention"]
    assert cfg.sliding_window == 8


def test_moe_and_mla_fields_shrink():
    ds = tiny_config("deepseek_v3")
    assert (ds.n_routed_experts, ds.num_experts_per_tok, ds.n_group, ds.topk_group) == (4, 2, 2, 1)
    assert ds.kv_lora_rank == 16 and ds.qk_rope_head_dim == 8
    assert ds.num_key_value_heads == ds.num_attention_heads  # MLA expands the latent to every head
    assert tiny_config("llama").num_key_value_heads == 2  # GQA where the family allows it
    mx = tiny_config("mixtral")
    assert (mx.num_local_experts, mx.num_experts_per_tok) == (4, 2)


def test_sub_configs_shrink():
    """DBRX keeps attention and FFN settings in sub-configs: they shrink too."""
    cfg = tiny_config("dbrx")
    assert cfg.ffn_config.moe_num_experts == 4 and cfg.ffn_config.ffn_hidden_size == 128
    assert cfg.attn_config.kv_n_heads == 2


def test_unknown_model_type_names_it():
    with pytest.raises(UnsupportedModelError, match="no_such_arch"):
        tiny_config("no_such_arch")


def test_arch_list_skips_with_reasons():
    archs = {a.model_type: a for a in causal_lm_archs()}
    assert archs["llama"].skip is None and archs["gpt2"].skip is None
    assert archs["bart"].skip.startswith("encoder-decoder")
    assert archs["bert"].skip.startswith("bidirectional")
    assert archs["mamba"].skip.startswith("recurrent")
    assert archs["gemma3"].skip.startswith("multimodal")
    with pytest.raises(UnsupportedModelError, match="not_a_model"):
        causal_lm_archs(["llama", "not_a_model"])
