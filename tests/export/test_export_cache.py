"""The export cache: a second export of the same model loads the saved program instead of tracing."""

from __future__ import annotations

import pytest
import torch

from autodeploy.export import cache as export_cache
from autodeploy.export import export as export_mod
from autodeploy.export import export_model
from tests.helpers.tiny_models import tiny_model


@pytest.fixture
def cache_on(monkeypatch, tmp_path):
    monkeypatch.setenv("AUTODEPLOY_EXPORT_CACHE", "1")
    return tmp_path


def _no_trace(*args, **kwargs):
    raise AssertionError("traced although the cache holds this model")


def test_second_export_loads_the_saved_program(cache_on, monkeypatch):
    model = tiny_model("llama")
    first = export_model(model, max_batch_size=4, max_seq_len=64, cache_root=cache_on)
    assert len(list((cache_on / "export").glob("*.pt2"))) == 1
    monkeypatch.setattr(export_mod, "_trace", _no_trace)
    second = export_model(model, max_batch_size=4, max_seq_len=64, cache_root=cache_on)
    assert second.code == first.code
    assert second.meta["export_patches"] == first.meta["export_patches"]
    assert second.meta["dynamic_dims"] == first.meta["dynamic_dims"]
    stacks = lambda gm: [(n.name, n.meta.get("nn_module_stack")) for n in gm.graph.nodes]  # noqa: E731
    assert stacks(second) == stacks(first)  # module paths: detection and sharding read them
    for node in (n for n in second.graph.nodes if n.op == "placeholder"):
        assert all(isinstance(d, torch.SymInt) for d in node.meta["val"].shape)
    for b, s in ((1, 3), (3, 7)):  # both dims still dynamic, numerics identical
        ids, pos = torch.randint(0, 256, (b, s)), torch.arange(s).expand(b, s)
        with torch.no_grad():
            assert torch.equal(second(ids, pos), first(ids, pos))


def test_key_changes_with_config_dims_and_dtype():
    model = tiny_model("llama")
    key = export_cache.cache_key(model, 4, 64)
    assert export_cache.cache_key(model, 4, 64) == key
    assert export_cache.cache_key(model, 8, 64) != key
    other = tiny_model("llama")
    other.config.rms_norm_eps = other.config.rms_norm_eps * 2
    assert export_cache.cache_key(other, 4, 64) != key
    assert export_cache.cache_key(model.to(torch.float64), 4, 64) != key


def test_unreadable_entry_is_traced_again_and_replaced(cache_on):
    model = tiny_model("llama")
    export_model(model, max_batch_size=4, max_seq_len=64, cache_root=cache_on)
    (entry,) = (cache_on / "export").glob("*.pt2")
    entry.write_bytes(b"truncated")
    gm = export_model(model, max_batch_size=4, max_seq_len=64, cache_root=cache_on)
    ids, pos = torch.randint(0, 256, (2, 5)), torch.arange(5).expand(2, 5)
    with torch.no_grad():
        assert torch.equal(gm(ids, pos), model(input_ids=ids, position_ids=pos, use_cache=False).logits)
    assert entry.stat().st_size > len(b"truncated")  # rewritten


def test_switches(monkeypatch):
    monkeypatch.setenv("AUTODEPLOY_EXPORT_CACHE", "0")
    assert not export_cache.enabled(True)
    monkeypatch.setenv("AUTODEPLOY_EXPORT_CACHE", "1")
    assert export_cache.enabled(True) and not export_cache.enabled(False)


def test_type_hints_memo_during_load_is_scoped_and_exact():
    import dataclasses
    import typing

    from autodeploy.export import load_memos

    @dataclasses.dataclass
    class Entry:
        name: str
        size: int

    original = typing.get_type_hints
    with load_memos.type_hints_cached():
        first = typing.get_type_hints(Entry, globalns={})
        first["name"] = bytes  # a caller changing its copy changes nothing for the next one
        assert typing.get_type_hints(Entry, globalns={}) == {"name": str, "size": int}
        assert typing.get_type_hints(load_memos.memoized_load) == original(load_memos.memoized_load)  # functions pass through
    assert typing.get_type_hints is original


def test_memoized_load_gives_the_same_program(tmp_path):
    """The load memos change nothing in what torch.export.load returns: code, every node's fake value,
    the dims' ranges; and the memos are gone afterwards."""
    import typing

    import sympy

    from autodeploy.export import load_memos
    from tests.helpers.graph_meta import node_vals

    model = tiny_model("llama")
    ep, _ = export_mod._trace(model, export_mod.LogitsOnly(model).eval(), torch.device("cpu"),
                              ({0: torch.export.Dim.DYNAMIC(min=1, max=4), 1: torch.export.Dim.DYNAMIC(min=1, max=64)},) * 2)
    torch.export.save(ep, tmp_path / "p.pt2")
    originals = sympy.sympify, typing.get_type_hints
    plain = torch.export.load(tmp_path / "p.pt2")
    fast = load_memos.memoized_load(tmp_path / "p.pt2")
    assert fast.graph_module.code == plain.graph_module.code
    assert node_vals(fast.graph_module) == node_vals(plain.graph_module)
    assert {str(k): str(v) for k, v in fast.range_constraints.items()} == {str(k): str(v) for k, v in plain.range_constraints.items()}
    assert (sympy.sympify, typing.get_type_hints) == originals


def test_sympify_memo_is_scoped_and_keyed_by_locals():
    import sympy

    from autodeploy.export import load_memos

    a, b = sympy.Symbol("s0", integer=True, positive=True), sympy.Symbol("s0", integer=True)
    original = sympy.sympify
    with load_memos.sympify_cached():
        first = sympy.sympify("2*s0", locals={"s0": a})
        assert sympy.sympify("2*s0", locals={"s0": a}) is first  # memoized
        assert sympy.sympify("2*s0", locals={"s0": b}) == 2 * b  # another symbol under that name: parsed again
        assert sympy.sympify(3) == 3  # non-string input passes through
    assert sympy.sympify is original
