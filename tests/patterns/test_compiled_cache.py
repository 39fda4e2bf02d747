"""The pattern disk cache: a variant read back from JSON is the variant tracing builds, for every
pattern of every family and dtype, and a warm process matches without tracing."""

from __future__ import annotations

import pytest
import torch

from autodeploy.patterns import compiled_cache, registry
from autodeploy.patterns.attention import ATTENTION_PATTERNS
from autodeploy.patterns.gated_mlp import GATED_MLP_PATTERNS
from autodeploy.patterns.layout import LAYOUT_PATTERNS
from autodeploy.patterns.rmsnorm import RMSNORM_PATTERNS
from autodeploy.patterns.rope import ROPE_PATTERNS

FAMILIES = [ATTENTION_PATTERNS, GATED_MLP_PATTERNS, LAYOUT_PATTERNS, RMSNORM_PATTERNS, ROPE_PATTERNS]
ALL = [(p, dt) for family in FAMILIES for p in family for dt in p.dtypes]


def _shape(c: registry._Compiled) -> tuple:
    """Everything matching reads: structure, targets, literals and specs; input names; outputs."""
    index = {n: i for i, n in enumerate(c.graph.nodes)}
    return (registry._signature(c), c.size, sorted((index[p], name) for p, name in c.inputs.items()),
            [index[o] for o in c.outputs])


def test_entry_names_are_unique():
    names = [compiled_cache.entry_name(p, dt) for p, dt in ALL]
    assert None not in names and len(set(names)) == len(names)


@pytest.mark.parametrize("pattern,dtype", ALL, ids=[f"{p.search.__module__.rsplit('.', 1)[-1]}-{p.name}-{dt}" for p, dt in ALL])
def test_stored_variant_equals_the_traced_one(pattern, dtype):
    traced = registry._compile_one(pattern, dtype)
    d = compiled_cache.encode(traced.graph, traced.inputs, traced.outputs, traced.specs, traced.size)
    import json

    loaded = registry._Compiled(pattern, *compiled_cache.decode(json.loads(json.dumps(d))))
    assert _shape(loaded) == _shape(traced)
    for a, b in zip(traced.graph.nodes, loaded.graph.nodes):  # exact literal types (1 vs 1.0 vs True)
        assert (a.op, a.name, a.target) == (b.op, b.name, b.target)
        assert repr((a.args, a.kwargs)) == repr((b.args, b.kwargs))
        assert [type(x) for x in torch.utils._pytree.tree_leaves((a.args, a.kwargs))] == \
               [type(x) for x in torch.utils._pytree.tree_leaves((b.args, b.kwargs))]


def _fresh_process(monkeypatch, cache: str, root=None) -> None:
    """Forget every compiled variant and the open store, as a new process would."""
    monkeypatch.setenv("AUTODEPLOY_PATTERN_CACHE", cache)
    if root is not None:
        monkeypatch.setenv("AUTODEPLOY_CACHE", str(root))
    monkeypatch.setattr(compiled_cache, "_store", None)
    for p in {id(p): p for p, _ in ALL}.values():
        monkeypatch.setattr(p, "_compiled", {})


def _no_trace(*args, **kwargs):
    raise AssertionError("traced although the store holds this variant")


def test_store_round_trip_and_off_switch(monkeypatch, tmp_path):
    pattern = RMSNORM_PATTERNS[1]
    _fresh_process(monkeypatch, "1", tmp_path)
    first = registry._stored_or_compiled(pattern, torch.float32)
    (entry,) = (tmp_path / "patterns").glob("*.json")
    _fresh_process(monkeypatch, "1")
    compile_one = registry._compile_one
    monkeypatch.setattr(registry, "_compile_one", _no_trace)
    assert _shape(registry._stored_or_compiled(pattern, torch.float32)) == _shape(first)
    entry.write_text("{truncated")  # unreadable: traced again and rewritten, no error
    _fresh_process(monkeypatch, "1")
    monkeypatch.setattr(registry, "_compile_one", compile_one)
    assert _shape(registry._stored_or_compiled(pattern, torch.float32)) == _shape(first)
    assert entry.read_text().startswith("{\"")
    monkeypatch.setenv("AUTODEPLOY_PATTERN_CACHE", "0")
    assert compiled_cache.store() is None


def test_pipeline_with_a_warm_store_gives_the_same_graph(monkeypatch, tmp_path):
    """The whole cpu recipe on a tiny llama: traced patterns, then stored ones, same code and values."""
    import copy

    from autodeploy.export import export_model
    from autodeploy.recipe import load_recipe
    from autodeploy.transforms.pipeline import TransformContext, run_pipeline
    from tests.helpers.graph_meta import node_vals
    from tests.helpers.tiny_models import tiny_model

    model = tiny_model("llama")
    exported = export_model(model, max_batch_size=4, max_seq_len=64)

    def run():
        gm = copy.deepcopy(exported)
        infos = run_pipeline(gm, TransformContext(recipe=load_recipe("cpu"), hf_config=model.config))
        return gm.code, node_vals(gm), [(i.name, i.matches) for i in infos]

    _fresh_process(monkeypatch, "0")
    plain = run()
    _fresh_process(monkeypatch, "1", tmp_path)
    assert run() == plain  # cold: traced and stored
    _fresh_process(monkeypatch, "1")
    monkeypatch.setattr(registry, "_compile_one", _no_trace)
    assert run() == plain  # warm: every variant from the store
