"""Export is exact: the exported graph, before any rewrite, gives the same logits as eager transformers.

For each of the 13 tiny architectures, the model is saved with save_pretrained and goes through
`autodeploy.optimize` (the real loading path: config, meta build, export, weights loaded into the
graph) with every transform off, then with only cleanup_export on. Logits must equal eager
transformers on the same weights bit for bit (fp32, max abs diff 0) at two (batch, seq) shapes,
both through the dynamic dims. SmolLM2 (the real GGUF) is checked at one shape.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch

import autodeploy
from autodeploy.export import LogitsOnly
from autodeploy.recipe import load_recipe
from autodeploy.transforms.pipeline import TransformContext, registry, run_pipeline
from tests.helpers.tiny_models import ARCHS, save_tiny

SHAPES = [(1, 5), (3, 17)]  # (batch, seq); the export example is (2, 8)


def transforms_off(*keep: str) -> dict[str, bool]:
    """Overrides turning every registered transform off except `keep` (robust to new transforms)."""
    return {f"transforms.{name}.enabled": name in keep for name in registry()}


def eager_model(source_dir, config):
    """Eager transformers on the same weights; MoE through batched_mm, as the cpu recipe exports it."""
    from transformers import AutoModelForCausalLM

    kw = {}
    cls = AutoModelForCausalLM._model_mapping[type(config)]
    if cls._can_set_experts_implementation():
        kw["experts_implementation"] = "batched_mm"
    model = AutoModelForCausalLM.from_pretrained(source_dir, dtype=torch.float32, **kw)
    return LogitsOnly(model.eval())


def inputs(batch: int, seq: int, vocab: int):
    gen = torch.Generator().manual_seed(batch * 1000 + seq)
    ids = torch.randint(0, vocab, (batch, seq), generator=gen)
    pos = torch.arange(seq).expand(batch, seq)
    return ids, pos


def max_abs_diff(rt, ref, batch: int, seq: int) -> float:
    ids, pos = inputs(batch, seq, rt.hf_config.get_text_config().vocab_size)
    with torch.no_grad():
        expected = ref(ids, pos)
        actual = rt.graph_module(ids, pos)
    assert actual.shape == expected.shape == (batch, seq, expected.shape[-1])
    assert actual.dtype == torch.float32
    return (actual - expected).abs().max().item()


def with_cleanup(raw):
    """The raw runtime's graph (weights loaded) copied, then cleanup_export run on it by the pipeline.

    Same as optimize() with only cleanup_export on, without exporting a second time.
    """
    gm = copy.deepcopy(raw.graph_module)
    recipe = load_recipe("cpu", transforms_off("cleanup_export"))
    infos = run_pipeline(gm, TransformContext(recipe=recipe, hf_config=raw.hf_config))
    return SimpleNamespace(graph_module=gm, hf_config=raw.hf_config, report=infos)


@pytest.fixture(scope="module", params=ARCHS)
def arch(request, tmp_path_factory):
    """(name, model dir, eager reference, runtime with no transforms, graph with cleanup_export only)."""
    name = request.param
    path = save_tiny(name, tmp_path_factory.mktemp(name))
    raw = autodeploy.optimize(str(path), "cpu", **transforms_off())
    return name, path, eager_model(path, raw.hf_config), raw, with_cleanup(raw)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"b{s[0]}s{s[1]}")
def test_empty_pipeline_is_exact(arch, shape):
    name, _, ref, raw, _ = arch
    assert all(info.skipped for info in raw.report), "pipeline should be empty"
    assert max_abs_diff(raw, ref, *shape) == 0.0, f"{name}: exported graph differs from eager"


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"b{s[0]}s{s[1]}")
def test_cleanup_export_is_exact(arch, shape):
    name, _, ref, _, clean = arch
    (info,) = [i for i in clean.report if not i.skipped]
    assert info.name == "cleanup_export" and info.matches > 0
    assert max_abs_diff(clean, ref, *shape) == 0.0, f"{name}: cleaned graph differs from eager"


def test_export_keeps_batch_and_seq_dynamic(arch):
    """Placeholders carry symbolic batch and seq dims bounded by the recipe's limits."""
    _, _, _, raw, _ = arch
    placeholders = [n for n in raw.graph_module.graph.nodes if n.op == "placeholder"]
    assert len(placeholders) == 2  # input_ids, position_ids
    for node in placeholders:
        b, s = node.meta["val"].shape
        assert isinstance(b, torch.SymInt) and isinstance(s, torch.SymInt)
    lo, hi = raw.graph_module.meta["dynamic_dims"]["seq"]
    assert lo == 1 and hi >= raw.recipe.runtime.max_seq_len


@pytest.mark.slow
def test_smollm2_export_is_exact():
    rt = autodeploy.optimize("example:smollm2", "cpu", **transforms_off())
    assert rt.source.kind == "local"  # the GGUF converted once to a safetensors folder
    assert max_abs_diff(rt, eager_model(rt.source.location, rt.hf_config), 2, 11) == 0.0
