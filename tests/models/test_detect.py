"""Architecture detection: config facts, each checked against the exported graph.

For the 13 tiny architectures, `detect_architecture` must report the attention kind, KV heads,
MoE experts and top-k, RoPE theta and norm kind that the config states, and the graph checks must
agree (no warnings). A config edited to contradict its graph must produce a warning.
"""

from __future__ import annotations

import copy

import pytest

from autodeploy.export import export_model
from autodeploy.models.detect import detect_architecture
from autodeploy.models.factory import build_meta_model
from autodeploy.models.source import resolve_source
from autodeploy.recipe import load_recipe
from tests.helpers.tiny_models import ARCHS, tiny_config

# What each tiny config is, stated independently of the detector's own rules.
EXPECTED = {
    "llama": dict(attention_kind="GQA", norm="rmsnorm", mlp="gated(silu)", rope="default"),
    "mistral": dict(attention_kind="GQA", norm="rmsnorm", mlp="gated(silu)", rope="default"),
    "qwen2": dict(attention_kind="GQA", norm="rmsnorm", mlp="gated(silu)", rope="default"),
    "qwen3": dict(attention_kind="GQA", norm="rmsnorm", mlp="gated(silu)", rope="default"),
    "phi3": dict(attention_kind="GQA", norm="rmsnorm", mlp="gated(silu)", rope="default"),
    "gemma": dict(attention_kind="GQA", norm="rmsnorm(1+w)", mlp="gated(gelu_pytorch_tanh)", rope="default"),
    "gemma2": dict(attention_kind="GQA", norm="rmsnorm(1+w)", mlp="gated(gelu_pytorch_tanh)", rope="default",
                   logit_softcap=30.0, attn_softcap=50.0, sliding_window=8),
    "gemma3_text": dict(attention_kind="GQA", norm="rmsnorm(1+w)", mlp="gated(gelu_pytorch_tanh)", rope="default",
                        sliding_window=8),
    "gpt2": dict(attention_kind="MHA", norm="layernorm", mlp="plain(gelu_new)", rope=None),
    "mixtral": dict(attention_kind="GQA", norm="rmsnorm", mlp="gated(silu)", rope="default"),
    "qwen3_moe": dict(attention_kind="GQA", norm="rmsnorm", mlp="gated(silu)", rope="default"),
    "deepseek_v3": dict(attention_kind="MLA", norm="rmsnorm", mlp="gated(silu)", rope="default"),
    "gpt_oss": dict(attention_kind="GQA", norm="rmsnorm", mlp="gated(silu)", rope="yarn", attention_sinks=True,
                    sliding_window=8),
}


def export_tiny(name: str, tmp_path):
    from tests.helpers.tiny_models import save_tiny

    src = resolve_source(str(save_tiny(name, tmp_path)))
    model = build_meta_model(src, load_recipe("cpu"))
    return src.config, export_model(model, max_batch_size=4, max_seq_len=64)


@pytest.fixture(scope="module", params=ARCHS)
def detected(request, tmp_path_factory):
    name = request.param
    config, gm = export_tiny(name, tmp_path_factory.mktemp(name))
    return name, config, gm, detect_architecture(config, gm)


def test_detect_matches_config(detected):
    name, _, _, info = detected
    cfg = tiny_config(name)  # the config as written in the test helper, not as reloaded
    expected = EXPECTED[name]
    for key, value in expected.items():
        assert getattr(info, key) == value, f"{name}.{key}: {getattr(info, key)!r} != {value!r}"
    for key in ("logit_softcap", "attn_softcap", "sliding_window"):
        if key not in expected:
            assert getattr(info, key) is None, f"{name}.{key} should be None"
    assert info.attention_sinks == expected.get("attention_sinks", False)
    assert info.family == cfg.model_type
    assert info.num_layers == cfg.num_hidden_layers
    assert info.num_heads == cfg.num_attention_heads
    assert info.num_kv_heads == getattr(cfg, "num_key_value_heads", cfg.num_attention_heads)
    if info.rope is not None:
        params = cfg.rope_parameters
        params = params.get("full_attention", params)  # Gemma3: per layer type
        assert info.rope_theta == params["rope_theta"]
    else:
        assert info.rope_theta is None


def test_detect_moe(detected):
    name, _, _, info = detected
    cfg = tiny_config(name)
    experts = getattr(cfg, "num_local_experts", None) or getattr(cfg, "num_experts", None) or getattr(cfg, "n_routed_experts", None)
    if experts is None:
        assert info.moe is None
        return
    assert info.moe == {
        "experts": experts,
        "top_k": cfg.num_experts_per_tok,
        "shared_experts": getattr(cfg, "n_shared_experts", 0) or 0,
    }


def test_graph_agrees_with_config(detected):
    name, _, gm, info = detected
    assert info.warnings == [], f"{name}: {info.warnings}"
    hist = info.op_histogram
    assert sum(hist.values()) == sum(1 for n in gm.graph.nodes if n.op == "call_function")
    attention_ops = hist.get("aten.scaled_dot_product_attention", 0) + hist.get("aten.softmax.int", 0)
    assert attention_ops >= info.num_layers


def test_mismatched_config_warns(tmp_path):
    """A config that disagrees with its graph (wrong KV heads, theta, layers, norm) warns for each."""
    config, gm = export_tiny("llama", tmp_path)
    wrong = copy.deepcopy(config)
    wrong.num_key_value_heads = 1  # the graph has 2
    wrong.num_hidden_layers = 3  # the graph has 2 attention sites
    wrong.rope_parameters = dict(wrong.rope_parameters, rope_theta=500000.0)  # inv_freq says 10000
    wrong.model_type = "gemma"  # implies `1 + weight` RMSNorm scales the graph lacks
    warnings = detect_architecture(wrong, gm).warnings
    text = "\n".join(warnings)
    assert "KV heads" in text
    assert "3 layers" in text and "2 attention sites" in text
    assert "rope_theta 500000" in text
    assert "rmsnorm(1+w)" in text
    assert detect_architecture(config, gm).warnings == []  # the untouched config agrees


def test_other_architectures_graph_warns(tmp_path):
    """Llama's config read against GPT-2's graph: gated MLP, RMSNorm, RoPE and GQA are all contradicted."""
    llama_cfg, _ = export_tiny("llama", tmp_path / "llama")
    _, gpt2_gm = export_tiny("gpt2", tmp_path / "gpt2")
    text = "\n".join(detect_architecture(llama_cfg, gpt2_gm).warnings)
    for expected in ("gated MLP", "RMSNorm", "cos/sin absent", "2 KV heads"):
        assert expected in text, text
