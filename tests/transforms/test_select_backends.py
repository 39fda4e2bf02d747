"""select_backends: canonical ops swapped for the autotuner's pick, per shape bucket.

A second backend of autodeploy::rmsnorm (the reference under another op name, counting its calls)
stands in for a Triton kernel so the swap runs on the CPU; a fake clock decides who is faster.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.export import Dim

import autodeploy.ops  # noqa: F401
from autodeploy.profiler import autotuner
from autodeploy.profiler.candidates import register_backend, unregister_backend
from autodeploy.profiler.variants import derive_op, reference_fn
from autodeploy.recipe import load_recipe
from tests.helpers.transform_check import check_transform

RMSNORM = torch.ops.autodeploy.rmsnorm.default
ALT_CALLS = {"n": 0}


def _alt_impl(*args, **kwargs):
    ALT_CALLS["n"] += 1
    return reference_fn(RMSNORM)(*args, **kwargs)


ALT = derive_op(RMSNORM, "testalt", _alt_impl)


class TwoNorms(nn.Module):
    def __init__(self, h: int = 64):
        super().__init__()
        self.w1 = nn.Parameter(torch.rand(h) + 0.5)
        self.w2 = nn.Parameter(torch.rand(h) + 0.5)
        self.proj = nn.Linear(h, h)

    def forward(self, x):  # x [b, s, h]
        y = torch.ops.autodeploy.rmsnorm(x, self.w1, 1e-6)
        return torch.ops.autodeploy.rmsnorm(self.proj(y), self.w2, 1e-6)


INPUTS = (torch.randn(2, 8, 64),)
SECOND = (torch.randn(3, 5, 64),)
DYN = {"x": {0: Dim("b", max=64), 1: Dim("s", max=2048)}}


@pytest.fixture
def alt_backend(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTODEPLOY_CACHE", str(tmp_path))
    register_backend("rmsnorm", "alt", ALT)
    ALT_CALLS["n"] = 0
    yield tmp_path
    unregister_backend("rmsnorm", "alt")


def _history(gm) -> dict:
    return next(h for h in reversed(gm.meta["autodeploy_history"]) if h["name"] == "select_backends")


def _clock(monkeypatch, fn):
    timed = []

    def measure(cand, inputs, device, warmup=3, reps=10):
        rows = inputs[0].numel() // inputs[0].shape[-1]
        timed.append((cand.name, rows))
        return fn(cand.name, rows)

    monkeypatch.setattr(autotuner, "measure_candidate", measure)
    return timed


def test_faster_backend_replaces_every_site(alt_backend, monkeypatch):
    timed = _clock(monkeypatch, lambda name, rows: 1.0 if name == "alt" else 2.0)
    gm = check_transform(TwoNorms(), INPUTS, "select_backends", before={RMSNORM: 2, ALT: 0}, after={RMSNORM: 0, ALT: 2},
                         matches=2, second_inputs=SECOND, dynamic_shapes=DYN)
    # both sites share one signature: timed once per bucket (decode b=1, decode b=8, prefill s=1024)
    assert sorted({r for _, r in timed}) == [1, 8, 1024] and len(timed) == 6
    assert ALT_CALLS["n"] > 0
    entries = json.loads((alt_backend / "autotune.json").read_text())
    (per_op,) = entries.values()
    assert {e["choice"] for e in per_op["rmsnorm"].values()} == {"alt"}
    info = _history(gm)
    assert info["details"]["tuned"] == 3 and info["details"]["cache_hits"] == 0


def test_second_run_reads_the_choices_from_the_cache(alt_backend, monkeypatch):
    _clock(monkeypatch, lambda name, rows: 1.0 if name == "alt" else 2.0)
    check_transform(TwoNorms(), INPUTS, "select_backends", before={RMSNORM: 2}, after={ALT: 2}, dynamic_shapes=DYN)
    timed = _clock(monkeypatch, lambda name, rows: 2.0 if name == "alt" else 1.0)  # would now pick torch
    gm = check_transform(TwoNorms(), INPUTS, "select_backends", before={RMSNORM: 2}, after={ALT: 2, RMSNORM: 0},
                         matches=2, dynamic_shapes=DYN)
    assert timed == []
    assert _history(gm)["details"]["cache_hits"] == 3


def test_reference_fastest_leaves_the_graph_alone(alt_backend, monkeypatch):
    _clock(monkeypatch, lambda name, rows: 2.0 if name == "alt" else 1.0)
    check_transform(TwoNorms(), INPUTS, "select_backends", before={RMSNORM: 2}, after={RMSNORM: 2, ALT: 0}, matches=0,
                    second_inputs=SECOND, dynamic_shapes=DYN)
    assert ALT_CALLS["n"] == 0


def test_buckets_that_disagree_dispatch_per_call(alt_backend, monkeypatch):
    # alt wins decode-sized calls, the reference wins the prefill bucket
    _clock(monkeypatch, lambda name, rows: 1.0 if (name == "alt") == (rows <= 8) else 2.0)
    gm = check_transform(TwoNorms(), INPUTS, "select_backends", before={RMSNORM: 2}, after={RMSNORM: 0, ALT: 0},
                         matches=2, second_inputs=SECOND, dynamic_shapes=DYN)
    tuned = torch.ops.autodeploy.rmsnorm_tuned.default
    assert sum(n.target is tuned for n in gm.graph.nodes) == 2
    ALT_CALLS["n"] = 0
    with torch.no_grad():
        gm(torch.randn(4, 1, 64))  # 4 rows: nearest bucket 8 -> alt
    assert ALT_CALLS["n"] == 2
    with torch.no_grad():
        gm(torch.randn(1, 700, 64))  # 700 rows: nearest bucket 1024 -> reference
    assert ALT_CALLS["n"] == 2


def test_no_autotune_takes_the_preferred_backend_without_timing(alt_backend, monkeypatch):
    timed = _clock(monkeypatch, lambda name, rows: 2.0 if name == "alt" else 1.0)
    recipe = load_recipe("cpu", {"transforms.select_backends.autotune": False})
    check_transform(TwoNorms(), INPUTS, "select_backends", before={RMSNORM: 2}, after={ALT: 2, RMSNORM: 0}, matches=2,
                    dynamic_shapes=DYN, recipe=recipe)
    assert timed == [] and not (alt_backend / "autotune.json").exists()


def test_without_alternatives_nothing_is_timed(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTODEPLOY_CACHE", str(tmp_path))
    timed = _clock(monkeypatch, lambda name, rows: 1.0)
    check_transform(TwoNorms(), INPUTS, "select_backends", before={RMSNORM: 2}, after={RMSNORM: 2}, matches=0,
                    dynamic_shapes=DYN)
    assert timed == []


def test_linear_selection_with_a_second_backend_through_optimize(tmp_path):
    """The decode-linear timing path (GPU-only in production: a second aten.linear backend) over a
    whole exported model: symbolic dims in the graph must not reach a dict key (torch 2.11 refuses
    to hash a SymInt), and every linear site is judged."""
    import autodeploy
    from autodeploy.profiler.candidates import register_backend, unregister_backend
    from tests.helpers.tiny_models import save_tiny

    register_backend("linear", "second", _linear_with_max_rows())
    try:
        save_tiny("llama", tmp_path)
        rt = autodeploy.optimize(str(tmp_path), "cpu", **{"transforms.select_backends.autotune": True})
        info = next(i for i in rt.report if i.name == "select_backends")
        assert not info.skipped and "linear" in info.details["choices"]
        ids = torch.randint(0, 256, (1, 6))
        out = rt.generate([ids[0].tolist()], autodeploy.SamplingParams(max_tokens=4, ignore_eos=True))[0]
        assert out.error is None and len(out.token_ids) == 4
    finally:
        unregister_backend("linear", "second")


def _linear_with_max_rows():
    """A CPU stand-in with triton_linear's schema (x, weight, bias, max_rows): plain F.linear."""
    if not hasattr(torch.ops, "autodeploy_test") or not hasattr(torch.ops.autodeploy_test, "linear_rows"):
        @torch.library.custom_op("autodeploy_test::linear_rows", mutates_args=())
        def linear_rows(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                        max_rows: int = 16) -> torch.Tensor:
            return torch.nn.functional.linear(x, weight, bias)

        @linear_rows.register_fake
        def _(x, weight, bias=None, max_rows=16):
            return x.new_empty(*x.shape[:-1], weight.shape[0])

    return torch.ops.autodeploy_test.linear_rows.default


def test_examples_of_float8_inputs_are_drawn_in_fp32_then_cast():
    """fp8 weights (quantize_fp8) are timed on random examples too: torch has no normal kernel for
    float8, so the draw happens in fp32 (this failed on the GPU before)."""
    from autodeploy.transforms.select_backends import _example

    v = torch.empty(4, 8, dtype=torch.float8_e4m3fn, device="meta")
    ex = _example(v, {}, torch.device("cpu"))
    assert ex.dtype == torch.float8_e4m3fn and ex.shape == (4, 8)
    assert ex.float().abs().sum() > 0


GATED = torch.ops.autodeploy.gated_linear.default
GATED_ALT_CALLS = {"n": 0}


def _gated_alt_impl(*args, **kwargs):
    GATED_ALT_CALLS["n"] += 1
    return reference_fn(GATED)(*args, **kwargs)


GATED_ALT = derive_op(GATED, "testalt_per_shape", _gated_alt_impl)  # own name: test_fuse_gated_linear has "testalt"


class TwoGatedLinears(nn.Module):
    """Two projections with one K (64) and different N: the decision must be per weight shape."""

    def __init__(self, h: int = 64):
        super().__init__()
        self.w_small = nn.Parameter(torch.randn(2 * 32, h) * 0.1)  # [2I, K], I = 32
        self.w_big = nn.Parameter(torch.randn(2 * 64, h) * 0.1)  # I = 64
        self.proj = nn.Linear(32, h)

    def forward(self, x):  # x [b, s, h]
        y = self.proj(torch.ops.autodeploy.gated_linear(x, self.w_small, None, "silu"))
        return torch.ops.autodeploy.gated_linear(y, self.w_big, None, "silu")


def test_sites_sharing_k_are_decided_per_weight_shape(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTODEPLOY_CACHE", str(tmp_path))
    register_backend("gated_linear", "alt", GATED_ALT)
    try:
        def measure(cand, inputs, device, warmup=3, reps=10):
            n = inputs[1].shape[0]  # the weight's 2I: alt wins only on the small weight
            return (1.0 if n == 64 else 3.0) if cand.name == "alt" else 2.0

        monkeypatch.setattr(autotuner, "measure_candidate", measure)
        GATED_ALT_CALLS["n"] = 0
        check_transform(TwoGatedLinears(), INPUTS, "select_backends", before={GATED: 2, GATED_ALT: 0},
                        after={GATED: 1, GATED_ALT: 1}, matches=1, second_inputs=SECOND, dynamic_shapes=DYN)
        assert GATED_ALT_CALLS["n"] > 0
    finally:
        unregister_backend("gated_linear", "alt")


def test_per_shape_tables_dispatch_per_call(tmp_path, monkeypatch):
    """Both sites mixed, in opposite ways (small weight: alt at decode; big weight: alt at prefill):
    one signature, two tables told apart by the weight shapes at every call."""
    monkeypatch.setenv("AUTODEPLOY_CACHE", str(tmp_path))
    register_backend("gated_linear", "alt", GATED_ALT)
    try:
        def measure(cand, inputs, device, warmup=3, reps=10):
            rows = inputs[0].numel() // inputs[0].shape[-1]
            alt_wins = (rows <= 8) == (inputs[1].shape[0] == 64)
            return (1.0 if alt_wins else 3.0) if cand.name == "alt" else 2.0

        monkeypatch.setattr(autotuner, "measure_candidate", measure)
        gm = check_transform(TwoGatedLinears(), INPUTS, "select_backends", before={GATED: 2}, after={GATED: 0},
                             matches=2, second_inputs=SECOND, dynamic_shapes=DYN)
        tuned = torch.ops.autodeploy.gated_linear_tuned.default
        assert sum(n.target is tuned for n in gm.graph.nodes) == 2
        with torch.no_grad():
            GATED_ALT_CALLS["n"] = 0
            gm(torch.randn(4, 1, 64))  # decode-sized: only the small weight's site takes alt
            assert GATED_ALT_CALLS["n"] == 1
            GATED_ALT_CALLS["n"] = 0
            gm(torch.randn(1, 700, 64))  # prefill-sized: only the big weight's site takes alt
            assert GATED_ALT_CALLS["n"] == 1
    finally:
        unregister_backend("gated_linear", "alt")


def test_backends_say_which_overlap_under_pdl():
    # the Triton twins built only from PDL kernels, and the unfused pairs of them, carry the autotuner's margin;
    # library kernels (aten / cuBLAS / cuBLASLt) and Triton kernels without PDL do not
    import autodeploy.backends.triton  # noqa: F401  (registers the twins and the pairs)
    from autodeploy.profiler.candidates import backends_for, linear_backends

    cuda = torch.device("cuda")
    ops = torch.ops.autodeploy
    flags = lambda canonical: {b.name: b.pdl for b in backends_for(canonical, cuda)}  # noqa: E731
    assert {b.name: b.pdl for b in linear_backends(cuda)} == {"torch": False, "triton": True}
    assert flags(ops.add_rmsnorm_linear.default) == {"triton": True, "norm+cublas": False, "norm+gemv": True,
                                                      "torch": False}
    assert flags(ops.gated_linear.default) == {"triton": True, "cublas+triton_act": False, "torch": False}
    assert flags(ops.rope.default)["triton"] is False  # no PDL in the rope kernel
