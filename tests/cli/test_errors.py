"""Bad inputs: one clear line naming the cause, a non-zero exit, a traceback only with --debug.

Most cases run the CLI in-process (`main([...])`, stderr through capsys); one runs it as a
subprocess to check the real exit code and what a user sees on the terminal.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from autodeploy.cli.main import main
from tests.helpers.tiny_models import save_tiny, tiny_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> Path:
    return save_tiny("llama", tmp_path_factory.mktemp("llama"))


def run_cli(capsys, *args) -> tuple[int, str, str]:
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line_error(rc: int, out: str, err: str, *needles: str) -> str:
    assert rc == 1, f"exit code {rc}; stderr: {err}"
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


def test_nonexistent_path(capsys, tmp_path):
    missing = tmp_path / "no-such-model"
    rc, out, err = run_cli(capsys, "inspect", missing)
    assert_one_line_error(rc, out, err, "no such file or directory", str(missing))
    assert out == ""


def test_nonexistent_hub_id_offline(capsys, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # no network in tests; names the id either way
    rc, out, err = run_cli(capsys, "inspect", "nobody-here/no-such-model")
    assert_one_line_error(rc, out, err, "'nobody-here/no-such-model'", "not in the Hugging Face cache")


def test_neither_path_nor_hub_id(capsys):
    rc, out, err = run_cli(capsys, "inspect", "not a model")
    assert_one_line_error(rc, out, err, "neither an existing path nor a Hugging Face hub id")


def test_file_that_is_not_gguf(capsys, tmp_path):
    path = tmp_path / "weights.txt"
    path.write_text("hello")
    rc, out, err = run_cli(capsys, "inspect", path)
    assert_one_line_error(rc, out, err, str(path), "not a .gguf")


def test_directory_without_config(capsys, tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    rc, out, err = run_cli(capsys, "inspect", tmp_path)
    assert_one_line_error(rc, out, err, str(tmp_path), "has no config.json")


def test_directory_with_only_pickle_weights(capsys, tmp_path):
    tiny_config("llama").save_pretrained(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04N.")  # a pickle: never unpickled
    rc, out, err = run_cli(capsys, "optimize", tmp_path)
    assert_one_line_error(rc, out, err, "only pickle weights", "pytorch_model.bin", "safetensors")


def test_encoder_config_is_not_a_causal_lm(capsys, tmp_path):
    from transformers import BertConfig

    BertConfig(vocab_size=128, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
               intermediate_size=64).save_pretrained(tmp_path)
    rc, out, err = run_cli(capsys, "inspect", tmp_path)
    assert_one_line_error(rc, out, err, "BertConfig", "not a causal LM")


def test_encoder_decoder_config_is_not_a_causal_lm(capsys, tmp_path):
    from transformers import T5Config

    T5Config(d_model=32, num_layers=1, num_heads=2, d_ff=64, vocab_size=128).save_pretrained(tmp_path)
    rc, out, err = run_cli(capsys, "inspect", tmp_path)
    assert_one_line_error(rc, out, err, "T5Config", "encoder-decoder", "not a causal LM")


def test_export_failure_names_the_module(capsys, monkeypatch, llama_dir):
    """A data-dependent branch inside one MLP cannot be traced: the error names that submodule."""
    from transformers.models.llama import modeling_llama

    original = modeling_llama.LlamaMLP.forward

    def data_dependent_forward(self, x):
        if (x > 0).any():  # Python control flow on tensor values: export cannot guard on it
            return original(self, x)
        return x

    monkeypatch.setattr(modeling_llama.LlamaMLP, "forward", data_dependent_forward)
    rc, out, err = run_cli(capsys, "inspect", llama_dir)
    line = assert_one_line_error(rc, out, err, "cannot export LlamaForCausalLM", "model.layers.0.mlp", "LlamaMLP")
    assert "data_dependent_forward" in line
    assert "def forward(" not in err  # torch's partial-graph dump stays muted


def test_malformed_yaml_names_line_and_column(capsys, tmp_path, llama_dir):
    recipe = tmp_path / "broken.yaml"
    recipe.write_text("runtime:\n  dtype: [float32\n  device: cpu\n")
    rc, out, err = run_cli(capsys, "inspect", llama_dir, "--recipe", recipe)
    line = assert_one_line_error(rc, out, err, str(recipe), "malformed YAML", "line ")
    assert "column" in line


def test_unknown_recipe_key_names_key_and_file(capsys, tmp_path, llama_dir):
    recipe = tmp_path / "typo.yaml"
    recipe.write_text("runtime:\n  device: cpu\n  max_batchsize: 4\n")
    rc, out, err = run_cli(capsys, "inspect", llama_dir, "--recipe", recipe)
    assert_one_line_error(rc, out, err, str(recipe), "runtime.max_batchsize", "unknown key")


def test_set_of_unknown_field_names_the_field(capsys, llama_dir):
    rc, out, err = run_cli(capsys, "inspect", llama_dir, "--set", "runtime.max_batchsize=4")
    assert_one_line_error(rc, out, err, "--set", "runtime.max_batchsize", "unknown key")


def test_set_with_wrong_type_names_the_field(capsys, llama_dir):
    rc, out, err = run_cli(capsys, "inspect", llama_dir, "--set", "runtime.max_batch_size=many")
    assert_one_line_error(rc, out, err, "--set", "runtime.max_batch_size", "integer")


def test_unknown_recipe_name(capsys, llama_dir):
    rc, out, err = run_cli(capsys, "inspect", llama_dir, "--recipe", "h300")
    assert_one_line_error(rc, out, err, "unknown recipe 'h300'", "cpu", "h100")


def test_unknown_example(capsys):
    rc, out, err = run_cli(capsys, "inspect", "example:gpt5")
    assert_one_line_error(rc, out, err, "example:gpt5", "example:smollm2")


def _subprocess(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "autodeploy", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=300)


def test_subprocess_exit_code_and_traceback_only_with_debug(tmp_path):
    (tmp_path / "notes.txt").write_text("not a model")
    plain = _subprocess("inspect", str(tmp_path))
    assert plain.returncode == 1
    assert plain.stdout == ""
    assert "Traceback" not in plain.stderr
    assert plain.stderr.strip().splitlines() == [f"error: directory {tmp_path} has no config.json (not a Hugging Face model folder)"]

    debug = _subprocess("--debug", "inspect", str(tmp_path))
    assert debug.returncode == 1
    assert "Traceback (most recent call last)" in debug.stderr
    assert "SourceError" in debug.stderr
    assert debug.stderr.strip().splitlines()[-1].startswith("error: directory")
