"""`autodeploy recipes list|show`."""

from __future__ import annotations

import yaml

from autodeploy.cli.main import main
from autodeploy.recipe import list_recipes, recipes_dir


def test_recipes_list(capsys):
    assert main(["recipes", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("cpu", "h100", "h200", "a100"):
        assert name in out
    assert "bfloat16" in out and "cuda-graph" in out


def test_recipes_show_prints_the_file(capsys):
    assert main(["recipes", "show", "cpu"]) == 0
    out = capsys.readouterr().out
    assert yaml.safe_load(out) == yaml.safe_load((recipes_dir() / "cpu.yaml").read_text())


def test_recipes_show_resolved_includes_defaults(capsys):
    assert main(["recipes", "show", "h100", "--resolved"]) == 0
    data = yaml.safe_load(capsys.readouterr().out)
    assert data["name"] == "h100"
    assert data["runtime"]["dtype"] == "bfloat16"
    assert "kv_num_pages" in data["runtime"]  # a default the file does not mention
    assert data["transforms"]["cleanup_export"]["enabled"] is True


def test_recipes_show_unknown(capsys):
    assert main(["recipes", "show", "h300"]) == 1
    err = capsys.readouterr().err
    assert "unknown recipe 'h300'" in err and ", ".join(list_recipes()) in err


def test_recipes_show_invalid_file(capsys, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("runtime:\n  max_batch_size: -1\n")
    assert main(["recipes", "show", str(path)]) == 1
    err = capsys.readouterr().err
    assert str(path) in err and "runtime.max_batch_size" in err
