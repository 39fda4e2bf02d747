"""The Python API: `autodeploy.optimize(...) -> Runtime`, `rt.generate`, `rt.graph_module`, `rt.report`."""

from __future__ import annotations

import pytest
import torch
from torch import fx

import autodeploy
from autodeploy import SamplingParams
from autodeploy.errors import AutoDeployError, RecipeError, RequestError
from autodeploy.transforms.pipeline import TransformInfo, ordered_specs
from tests.helpers.tiny_models import save_tiny

PROMPTS = [[5, 17, 99, 3], [200, 11, 42, 7, 7, 64, 128, 250, 1], [33]]


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return save_tiny("llama", tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="module")
def rt(llama_dir):
    return autodeploy.optimize(str(llama_dir), "cpu")


def test_optimize_returns_a_runtime(rt):
    assert isinstance(rt, autodeploy.Runtime)
    assert isinstance(rt.graph_module, fx.GraphModule)
    assert all(isinstance(i, TransformInfo) for i in rt.report)
    assert [i.name for i in rt.report] == [s.name for s in ordered_specs()]
    assert any(i.matches > 0 for i in rt.report if not i.skipped)
    assert rt.arch.family == "llama" and rt.arch.warnings == []
    assert rt.recipe.name == "cpu" and rt.source.kind == "local"
    assert {"export_s", "transforms_s", "load_s", "total_s"} <= set(rt.timings)
    # weights are loaded: nothing left on the meta device
    assert not any(p.is_meta for p in rt.graph_module.parameters())


def test_greedy_generate_equals_transformers(rt, llama_dir):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(llama_dir, dtype=torch.float32).eval()
    outs = rt.generate(PROMPTS, SamplingParams(max_tokens=8))
    assert len(outs) == len(PROMPTS)
    for prompt, out in zip(PROMPTS, outs):
        with torch.no_grad():
            ref = hf.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False, attention_mask=None)
        expected = ref[0, len(prompt):].tolist()
        assert out.error is None and out.prompt_token_ids == prompt
        assert out.token_ids == expected, f"prompt {prompt}: {out.token_ids} != {expected}"
        assert out.finish_reason == ("stop" if len(expected) < 8 else "length")


def test_single_prompt_as_token_ids(rt):
    (out,) = rt.generate(PROMPTS[0], SamplingParams(max_tokens=3, ignore_eos=True))
    assert out.prompt_token_ids == PROMPTS[0]
    assert len(out.token_ids) == 3 and out.finish_reason == "length"
    assert out.text == ""  # no tokenizer in the folder: token ids only


def test_text_prompt_without_tokenizer_fails_alone(rt):
    outs = rt.generate(["hello", PROMPTS[2]], SamplingParams(max_tokens=2, ignore_eos=True))
    assert outs[0].finish_reason == "error" and "tokenizer" in outs[0].error
    assert outs[1].error is None and len(outs[1].token_ids) == 2


def test_too_long_prompt_fails_alone(rt):
    too_long = [7] * rt.recipe.runtime.max_seq_len
    outs = rt.generate([PROMPTS[0], too_long, PROMPTS[2]], SamplingParams(max_tokens=4, ignore_eos=True))
    assert outs[1].finish_reason == "error"
    assert str(len(too_long)) in outs[1].error and "max_seq_len" in outs[1].error
    for i in (0, 2):
        assert outs[i].error is None and len(outs[i].token_ids) == 4


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        (dict(max_tokens=0), "max_tokens"),
        (dict(temperature=-0.5), "temperature"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_k=-1), "top_k"),
        (dict(repetition_penalty=0), "repetition_penalty"),
    ],
)
def test_sampling_params_validation(kwargs, needle):
    with pytest.raises(RequestError, match=needle) as e:
        SamplingParams(**kwargs)
    assert isinstance(e.value, AutoDeployError)
    assert "\n" not in str(e.value)


def test_keyword_overrides(llama_dir):
    off = {f"transforms.{s.name}.enabled": False for s in ordered_specs()}
    rt = autodeploy.optimize(str(llama_dir), "cpu", max_batch_size=2, **off)
    assert rt.recipe.runtime.max_batch_size == 2
    assert all(i.skipped for i in rt.report)
    # the uncached graph runs as exported: (input_ids, position_ids) -> logits
    assert rt.forward(torch.tensor([PROMPTS[1]])).shape == (1, len(PROMPTS[1]), 256)


def test_unknown_keyword_is_a_recipe_error(llama_dir):
    with pytest.raises(RecipeError, match="unknown setting 'max_batch'"):
        autodeploy.optimize(str(llama_dir), "cpu", max_batch=2)


@pytest.mark.slow
def test_smollm2_knows_the_capital_of_france():
    rt = autodeploy.optimize("example:smollm2", "cpu")
    out = rt.chat([{"role": "user", "content": "What is the capital of France?"}], SamplingParams(max_tokens=32))
    assert out.error is None
    assert "Paris" in out.text, out.text
