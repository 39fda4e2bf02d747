"""`autodeploy inspect`: JSON and table views of a tiny model folder."""

from __future__ import annotations

import json

import pytest

from autodeploy import progress
from autodeploy.cli.main import main
from tests.helpers.tiny_models import save_tiny, tiny_config


@pytest.fixture(scope="module")
def qwen3_moe_dir(tmp_path_factory):
    return save_tiny("qwen3_moe", tmp_path_factory.mktemp("qwen3_moe"))


def test_inspect_json(capsys, qwen3_moe_dir):
    rc = main(["inspect", str(qwen3_moe_dir), "--json"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert err == ""  # --json: nothing but the JSON, no progress lines
    info = json.loads(out)
    cfg = tiny_config("qwen3_moe")
    assert info["family"] == "qwen3_moe"
    assert info["attention_kind"] == "GQA"
    assert info["num_kv_heads"] == cfg.num_key_value_heads
    assert info["head_dim"] == cfg.head_dim
    assert info["moe"] == {"experts": cfg.num_experts, "top_k": cfg.num_experts_per_tok, "shared_experts": 0}
    assert info["rope_theta"] == cfg.rope_parameters["rope_theta"]
    assert info["norm"] == "rmsnorm"
    assert info["warnings"] == []
    assert info["op_histogram"]["aten.scaled_dot_product_attention"] == cfg.num_hidden_layers
    assert info["op_histogram"]["aten.topk"] == 2


def test_inspect_table(capsys, qwen3_moe_dir):
    rc = main(["inspect", str(qwen3_moe_dir), "--top-ops", "3"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "Qwen3MoeForCausalLM" in out
    assert "4 experts, top-2" in out
    assert "graph agrees with the config" in out
    assert "more (--top-ops)" in out
    # progress on stderr: resolve, build, export; the console is off again once the command returns
    assert "Exporting with torch.export" in err
    assert progress.console() is None


def test_inspect_config_only_folder(capsys, tmp_path):
    """inspect needs no weights: a folder holding only config.json is enough."""
    tiny_config("gpt2").save_pretrained(tmp_path)
    rc = main(["inspect", str(tmp_path), "--json"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    info = json.loads(out)
    assert (info["attention_kind"], info["norm"], info["rope"]) == ("MHA", "layernorm", None)
    assert info["mlp"].startswith("plain")
