"""The transform pipeline: registry, stage order, enable/skip, the shared epilogue, history, dumps, report."""

from __future__ import annotations

import copy
import json
import logging
import re
from pathlib import Path

import pytest
import torch

import autodeploy.transforms as transforms_pkg
from autodeploy.cli.main import main
from autodeploy.export import export_model
from autodeploy.graph import aten, nodes_of, val
from autodeploy.recipe import load_recipe
from autodeploy.transforms.pipeline import (
    Stage,
    TransformConfig,
    TransformContext,
    TransformInfo,
    ordered_specs,
    register,
    registry,
    run_pipeline,
)
from tests.helpers.tiny_models import save_tiny, tiny_model


def only_on(*names: str):
    """The cpu recipe with every transform off except `names`."""
    return load_recipe("cpu", {f"transforms.{n}.enabled": n in names for n in registry()})


@pytest.fixture(scope="module")
def exported():
    """A tiny llama exported with real weights (input_ids, position_ids) -> logits; copy before mutating."""
    return export_model(tiny_model("llama"), max_batch_size=4, max_seq_len=64)


@pytest.fixture
def gm(exported):
    return copy.deepcopy(exported)


@pytest.fixture
def toy():
    """Register throwaway transforms for one test (named through their module), removed afterwards."""
    added: list[str] = []

    def add(name: str, stage: Stage, fn, *, shape_prop: bool = False, config=TransformConfig):
        fn.__module__ = f"tests.toy.{name}"
        register(stage, config, shape_prop=shape_prop)(fn)
        added.append(name)

    yield add
    for name in added:
        registry().pop(name)


def test_registry_keys_are_file_names():
    files = {p.stem for p in Path(transforms_pkg.__file__).parent.glob("*.py")}
    expected = {f for f in files if f != "pipeline" and not f.startswith("_")}
    assert set(registry()) == expected
    for name, spec in registry().items():
        assert spec.apply.__module__ == f"autodeploy.transforms.{name}"
        assert issubclass(spec.config_cls, TransformConfig)
        assert re.fullmatch(r"[a-z]+(_[a-z0-9]+)+", name), f"{name}: registry keys are verb_object"


def test_stages_run_in_order(gm):
    assert [s.name for s in Stage] == ["CLEANUP", "CANONICALIZE", "QUANTIZE", "SHARD", "FUSE", "CACHE", "COMPILE"]
    infos = run_pipeline(gm, TransformContext(recipe=only_on("cleanup_export")))
    specs = ordered_specs()
    assert [i.name for i in infos] == [s.name for s in specs]  # one info per registered transform
    ranks = [s.stage for s in specs]
    assert ranks == sorted(ranks)
    assert [i.stage for i in infos] == [s.stage.name.lower() for s in specs]


def test_enable_and_skip(gm):
    infos = {i.name: i for i in run_pipeline(gm, TransformContext(recipe=only_on("cleanup_export")))}
    assert not infos["cleanup_export"].skipped
    assert all(i.skipped and i.matches == 0 and i.seconds == 0 for n, i in infos.items() if n != "cleanup_export")


def test_only_restricts_to_named_transforms(gm):
    infos = run_pipeline(gm, TransformContext(recipe=load_recipe("cpu")), only=["cleanup_export"])
    assert [i.name for i in infos if not i.skipped] == ["cleanup_export"]


def _calls(gm) -> int:
    return sum(1 for n in gm.graph.nodes if n.op == "call_function")


def test_transform_info_matches_seconds_changed(gm):
    before, asserts = _calls(gm), len(nodes_of(gm, aten._assert_tensor_metadata.default))
    ctx = TransformContext(recipe=only_on("cleanup_export"))
    (info,) = [i for i in run_pipeline(gm, ctx) if not i.skipped]
    assert (info.name, info.stage, info.changed) == ("cleanup_export", "cleanup", True)
    assert not nodes_of(gm, aten._assert_tensor_metadata.default)
    # each match removes one node (every assert among them); dead-code elimination may drop a few more
    assert asserts <= info.matches <= before - _calls(gm)
    assert info.seconds > 0
    (again,) = [i for i in run_pipeline(gm, ctx) if not i.skipped]
    assert (again.matches, again.changed) == (0, False)  # idempotent: nothing left to clean


def test_history_in_graph_meta(gm):
    ctx = TransformContext(recipe=only_on("cleanup_export"))
    first = run_pipeline(gm, ctx)
    run_pipeline(gm, ctx)
    history = gm.meta["autodeploy_history"]
    assert len(history) == 2 * len(first)
    assert history[: len(first)] == [i.as_dict() for i in first]
    entry = next(h for h in history if h["name"] == "cleanup_export")
    assert entry["matches"] > 0 and entry["skipped"] is False and entry["seconds"] > 0


def test_dump_graphs_writes_one_file_per_run_transform(gm, tmp_path):
    infos = run_pipeline(gm, TransformContext(recipe=only_on("cleanup_export")), dump_dir=tmp_path / "graphs")
    files = sorted(p.name for p in (tmp_path / "graphs").iterdir())
    index = 1 + [i.name for i in infos].index("cleanup_export")
    assert files == ["00_exported.txt", f"{index:02d}_cleanup_export.txt"]
    before = (tmp_path / "graphs" / "00_exported.txt").read_text()
    after = (tmp_path / "graphs" / files[1]).read_text()
    assert "def forward" in before and "def forward" in after
    assert "_assert_tensor_metadata" in before and "_assert_tensor_metadata" not in after


def test_shared_epilogue_removes_dead_code_and_recompiles(gm, toy):
    def apply(gm, ctx, cfg):
        x = next(n for n in gm.graph.nodes if n.op == "placeholder")
        with gm.graph.inserting_after(x):
            gm.graph.call_function(aten.sinh.default, (x,))  # no users: dead
        return TransformInfo(matches=1, changed=True)

    toy("add_dead_node", Stage.FUSE, apply)
    run_pipeline(gm, TransformContext(recipe=load_recipe("cpu")), only=["add_dead_node"])
    assert not nodes_of(gm, aten.sinh.default)
    assert "sinh" not in gm.code


def test_shape_propagation_when_asked(gm, toy):
    def apply(gm, ctx, cfg):
        out = next(n for n in gm.graph.nodes if n.op == "output")
        logits = out.args[0]
        with gm.graph.inserting_before(out):
            scaled = gm.graph.call_function(aten.mul.Tensor, (logits, 2.0))
        out.replace_input_with(logits, scaled)
        return TransformInfo(matches=1, changed=True)

    toy("scale_logits", Stage.FUSE, apply, shape_prop=True)
    run_pipeline(gm, TransformContext(recipe=load_recipe("cpu")), only=["scale_logits"])
    (scaled,) = [n for n in nodes_of(gm, aten.mul.Tensor) if isinstance(n.args[1], float) and n.args[1] == 2.0]
    assert isinstance(val(scaled), torch.Tensor)
    assert val(scaled).shape[-1] == 256  # [b, s, vocab], batch and seq symbolic
    ids = torch.randint(0, 256, (2, 5))
    pos = torch.arange(5).expand(2, 5)
    assert gm(ids, pos).shape == (2, 5, 256)


def test_warning_reaches_info_and_log(gm, toy, caplog):
    def apply(gm, ctx, cfg):
        return TransformInfo(matches=0, warning="expected a pattern, found none")

    toy("find_nothing", Stage.CANONICALIZE, apply)
    with caplog.at_level(logging.WARNING, logger="autodeploy"):
        (info,) = [i for i in run_pipeline(gm, TransformContext(recipe=load_recipe("cpu")), only=["find_nothing"])
                   if not i.skipped]
    assert info.warning == "expected a pattern, found none"
    assert "find_nothing: expected a pattern, found none" in caplog.text


def test_optimize_prints_each_transforms_match_count(capsys, monkeypatch, tmp_path):
    """The report table of `autodeploy optimize` (the full cpu recipe) has one row per transform with its matches."""
    monkeypatch.setenv("COLUMNS", "200")  # no wrapped cells
    model_dir = save_tiny("llama", tmp_path / "llama")
    report = tmp_path / "report.json"
    dumps = tmp_path / "graphs"
    rc = main(["optimize", str(model_dir), "--json", str(report), "--dump-graphs", str(dumps)])
    out, err = capsys.readouterr()
    assert rc == 0, err
    infos = json.loads(report.read_text())["transforms"]
    assert [i["name"] for i in infos] == [s.name for s in ordered_specs()]
    rows = {cells[0]: cells for cells in _table_rows(out)}
    for info in infos:
        cells = rows[info["name"]]
        assert cells[2] == ("-" if info["skipped"] else str(info["matches"]))
    assert any(not i["skipped"] and i["matches"] > 0 for i in infos)
    assert len(list(dumps.iterdir())) == 1 + sum(not i["skipped"] for i in infos)
    # progress went to stderr, one line per step
    assert "Exporting with torch.export" in err and "Transform cleanup_export" in err


def _table_rows(text: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip().strip("│").split("│")] for line in text.splitlines() if line.count("│") >= 6]


def test_cleanup_runs_only_after_a_change(gm, toy, monkeypatch):
    """A transform that leaves the graph as the last cleanup did costs no cleanup; one that edits it does."""
    from autodeploy.transforms import pipeline

    calls = []
    real_cleanup = pipeline.cleanup
    monkeypatch.setattr(pipeline, "cleanup", lambda g, **kw: (calls.append(1), real_cleanup(g, **kw)))

    def noop(gm, ctx, cfg):
        return TransformInfo()

    def rename_output(gm, ctx, cfg):  # a new argument object, equal in value: still counts as unchanged
        out = next(n for n in gm.graph.nodes if n.op == "output")
        out.args = tuple(out.args)
        return TransformInfo()

    def add_dead_node(gm, ctx, cfg):
        out = next(n for n in gm.graph.nodes if n.op == "output")
        with gm.graph.inserting_before(out):
            gm.graph.call_function(aten.mul.Tensor, (out.args[0], 3.0))
        return TransformInfo(changed=True)

    toy("noop_one", Stage.CLEANUP, noop)
    toy("noop_two", Stage.CLEANUP, noop)
    toy("same_args", Stage.CLEANUP, rename_output)
    toy("dead_node", Stage.CLEANUP, add_dead_node)
    toy("noop_three", Stage.CLEANUP, noop)
    run_pipeline(gm, TransformContext(recipe=load_recipe("cpu")),
                 only=["noop_one", "noop_two", "same_args", "dead_node", "noop_three"])
    assert len(calls) == 2  # the first transform (the export was never cleaned) and dead_node
    assert not [n for n in nodes_of(gm, aten.mul.Tensor) if n.args[1:] == (3.0,)]  # dead_node's mul: removed


def test_skipping_cleanup_changes_no_graph(monkeypatch):
    """The cpu recipe on a tiny llama: same code and node values as with a cleanup and a recompile
    after every transform; the final graph module runs its final graph."""
    from autodeploy.transforms import pipeline
    from tests.helpers.graph_meta import node_vals

    model = tiny_model("llama")
    exported = export_model(model, max_batch_size=4, max_seq_len=64)

    def run():
        g = copy.deepcopy(exported)
        infos = run_pipeline(g, TransformContext(recipe=load_recipe("cpu"), hf_config=model.config))
        assert g.code == g.graph.python_code(root_module="self").src  # the code is the final graph's
        return g.code, node_vals(g), [(i.name, i.matches) for i in infos]

    skipping = run()
    real_cleanup = pipeline.cleanup
    monkeypatch.setattr(pipeline, "graph_state", lambda g: object())  # never equal: cleanup every time
    monkeypatch.setattr(pipeline, "cleanup", lambda g, **kw: real_cleanup(g))  # with its recompile
    assert run() == skipping
