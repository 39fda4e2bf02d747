"""Model sources: local folders, random weights from a config or a named shape, the example GGUF."""

from __future__ import annotations

import json

import pytest

from autodeploy.errors import SourceError
from autodeploy.models.source import resolve_source
from tests.helpers.tiny_models import save_tiny, tiny_config


def test_local_folder(tmp_path):
    src = resolve_source(str(save_tiny("qwen2", tmp_path)))
    assert (src.kind, src.location, src.gguf_file) == ("local", str(tmp_path), None)
    assert src.config.model_type == "qwen2"
    assert src.has_tokenizer is False  # save_tiny writes no tokenizer files
    assert src.hf_kwargs() == {"trust_remote_code": False}


def test_random_from_a_config_only_folder(tmp_path):
    tiny_config("mistral").save_pretrained(tmp_path)  # config.json, no weights
    with pytest.raises(SourceError, match="no \\*.safetensors weights"):
        resolve_source(str(tmp_path))
    src = resolve_source(f"random:{tmp_path}")
    assert src.kind == "random" and src.config.model_type == "mistral"


def test_random_named_shape():
    src = resolve_source("random:llama-3.2-1b")
    assert src.kind == "random" and src.location is None and not src.has_tokenizer
    assert (src.config.hidden_size, src.config.num_hidden_layers, src.config.num_key_value_heads) == (2048, 16, 8)


@pytest.mark.slow
def test_example_is_converted_once_to_a_safetensors_folder():
    from autodeploy.models.example import example_dir, example_path

    src = resolve_source("example:smollm2")
    folder = example_dir("smollm2")
    assert (src.kind, src.location, src.spec) == ("local", str(folder), "example:smollm2")
    assert src.has_tokenizer
    assert (folder / "model.safetensors").exists() and (folder / "tokenizer.json").exists()
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config  # loads as plain fp32 safetensors
    assert (config["model_type"], config["num_hidden_layers"], config["hidden_size"]) == ("llama", 30, 576)
    # the GGUF next to it is a source of its own, with the same architecture
    gguf = resolve_source(str(example_path("smollm2")))
    assert (gguf.kind, gguf.gguf_file) == ("gguf", "SmolLM2-135M-Instruct.Q4_1.gguf")
    assert gguf.hf_kwargs()["gguf_file"] == gguf.gguf_file
    for key in ("num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads", "vocab_size"):
        assert getattr(gguf.config, key) == config[key]
