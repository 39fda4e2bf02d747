"""Triton decode linear vs torch.nn.functional.linear (interpreted on CPU in fp32, compiled on CUDA),
and its hookup: select_backends swaps decode-winning aten.linear sites, prefill-sized calls stay on
aten.linear, insert_kv_cache still finds the lm_head behind the swap."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.export import Dim

import autodeploy.ops  # noqa: F401
from autodeploy.backends.triton import linear
from autodeploy.profiler import autotuner, candidates
from autodeploy.profiler.candidates import linear_backends, register_backend, unregister_backend
from tests.backends.triton.cases import DEVICE, dtypes, randn
from tests.helpers.tolerances import assert_close
from tests.helpers.transform_check import check_transform

TRITON_LINEAR = torch.ops.autodeploy.triton_linear.default
ATEN_LINEAR = torch.ops.aten.linear.default


def _weight(n, k, dtype=torch.float32):
    return randn(n, k, dtype=dtype, scale=k**-0.5)  # outputs ~ N(0, |x|^2 / K)


def _config(kind, split=1, bn=16, bk=64):
    return dict(kind=kind, bn=bn, bk=bk, split=split, num_warps=4, num_stages=2)


@dtypes
@pytest.mark.parametrize("kind", ["fma", "dot", "dot_t"])
@pytest.mark.parametrize("m", [1, 2, 5, 16])
@pytest.mark.parametrize("bias", [False, True])
def test_matches_linear(bias, m, kind, dtype):
    # N = 37: the last 16-row tile is 5 rows; K = 192 = 3 BK steps
    w, b = _weight(37, 192, dtype), randn(37, dtype=dtype) if bias else None
    x = randn(m, 192, dtype=dtype)
    out = linear.launch(x, w, b, _config(kind))
    assert out.shape == (m, 37) and out.dtype == dtype
    assert_close(out, F.linear(x, w, b))


@dtypes
@pytest.mark.parametrize("kind", ["fma", "dot", "dot_t"])
@pytest.mark.parametrize("split", [2, 3, 5])
def test_split_k_partials_sum_to_linear(split, kind, dtype):
    # K = 320 = 5 BK steps: split 2 -> 3 + 2 steps, 3 -> 2 + 2 + 1, 5 -> one each; bias added once
    w, b = _weight(45, 320, dtype), randn(45, dtype=dtype)
    x = randn(3, 320, dtype=dtype)
    cfg = linear.normalized(_config(kind, split), 3, 45, 320)
    assert cfg["split"] == split and cfg["k_per_split"] % 64 == 0
    assert_close(linear.launch(x, w, b, _config(kind, split)), F.linear(x, w, b))


@dtypes
def test_default_config_leading_dims_and_strided_input(dtype):
    w, b = _weight(100, 128, dtype), randn(100, dtype=dtype)
    x = randn(2, 3, 200, dtype=dtype)[..., 10:138]  # a strided view of the activations: 6 rows
    out = torch.ops.autodeploy.triton_linear(x, w, b)
    assert out.shape == (2, 3, 100)
    assert_close(out, F.linear(x.contiguous(), w, b))


def test_rows_above_max_rows_take_aten_linear(monkeypatch):
    launched = []
    real = linear.launch
    monkeypatch.setattr(linear, "launch", lambda *a, **kw: launched.append(a[0].shape) or real(*a, **kw))
    w, b = _weight(24, 64), randn(24)
    for shape, max_rows, kernel in [((16, 64), 16, True), ((17, 64), 16, False), ((1, 4, 64), 4, True),
                                    ((1, 5, 64), 4, False), ((1, 64), 0, False)]:
        launched.clear()
        x = randn(*shape)
        assert_close(torch.ops.autodeploy.triton_linear(x, w, b, max_rows), F.linear(x, w, b))
        assert bool(launched) == kernel, (shape, max_rows)


def test_no_rows():
    w = _weight(8, 64)
    assert linear.launch(randn(0, 64), w).shape == (0, 8)


def test_unsupported():
    w, x = _weight(16, 128), randn(2, 128)
    assert linear.supports(x, w) and linear.supports(randn(16, 128), w, randn(16))
    assert not linear.supports(randn(17, 128), w)  # prefill-sized: cuBLAS
    assert not linear.supports(randn(2, 96), _weight(16, 96))  # K % 64
    assert not linear.supports(randn(2, 64), w)  # K mismatch
    assert not linear.supports(x, w, randn(15))  # bias shape
    assert not linear.supports(x, w.t().contiguous().t())  # weight columns strided
    assert not linear.supports(x.double(), w.double())
    assert not linear.supports(x, w.half())  # dtypes differ
    with pytest.raises(NotImplementedError, match="rows"):
        linear.launch(randn(17, 128), w)
    with pytest.raises(NotImplementedError, match="multiple of 64"):
        torch.ops.autodeploy.triton_linear(randn(2, 96), _weight(16, 96))


LLAMA_WEIGHTS = {  # (N, K) of Llama-3.2-1B / Llama-3.1-8B decode GEMMs (qkv and gate_up fused)
    "1b qkv": (3072, 2048), "1b o": (2048, 2048), "1b gate_up": (16384, 2048), "1b down": (2048, 8192),
    "1b lm_head": (128256, 2048), "8b qkv": (6144, 4096), "8b o": (4096, 4096), "8b gate_up": (28672, 4096),
    "8b down": (4096, 14336), "8b lm_head": (128256, 4096),
}


@pytest.mark.parametrize("itemsize", [2, 4])
@pytest.mark.parametrize("m", [1, 16])
@pytest.mark.parametrize("weight", list(LLAMA_WEIGHTS))
def test_launch_config_is_valid_and_fits_shared_memory(weight, m, itemsize):
    n, k = LLAMA_WEIGHTS[weight]
    cfg = linear.launch_config(m, n, k, 132, itemsize)  # an H100
    assert k % cfg["bk"] == 0 and cfg["k_per_split"] % cfg["bk"] == 0
    assert cfg["split"] * cfg["k_per_split"] >= k > (cfg["split"] - 1) * cfg["k_per_split"]
    # the pipelined weight and x tiles stay well inside the 227 KB an H100 block may take
    assert (cfg["bn"] + cfg["bm"]) * cfg["bk"] * itemsize * cfg["num_stages"] <= 160 * 1024


def test_launch_config_follows_the_h200_sweep():
    def cfg(weight, sms=132, itemsize=2):
        c = linear.launch_config(1, *(LLAMA_WEIGHTS.get(weight) or weight), sms, itemsize)
        return c["kind"], c["bn"], c["bk"], c["num_stages"], c["split"]

    # 64-row tiles, 512-byte K steps, 4 stages everywhere; 2 K splits only where 64 tiles or fewer leave SMs idle
    assert cfg("8b lm_head") == cfg("8b gate_up") == cfg("8b qkv") == ("dot_t", 64, 256, 4, 1)
    assert cfg("8b o") == cfg("8b down") == ("dot_t", 64, 256, 4, 2)
    assert cfg((3072, 4096)) == cfg((4096, 7168)) == ("dot_t", 64, 256, 4, 2)  # TP=2 qkv, down shards
    assert cfg((4096, 2048)) == cfg("1b o") == ("dot_t", 64, 256, 4, 1)  # rows of 4 KB: too short to halve
    assert cfg("8b o", itemsize=4) == ("dot_t", 64, 128, 4, 2)  # fp32: the same bytes a stage
    assert linear.launch_config(1, 64, 64, 4)["bk"] == 64


def test_opcheck_fake_and_schema():
    w, b = _weight(16, 64), randn(16)
    torch.library.opcheck(TRITON_LINEAR, (randn(3, 64), w, b, 16), test_utils=("test_schema", "test_faketensor"))


def test_candidates_offer_it_after_cublas():
    assert candidates.LINEAR_DECODE_ROWS == linear.MAX_ROWS
    assert [b.name for b in linear_backends(torch.device("cuda"))] == ["torch", "triton"]
    assert [b.name for b in linear_backends(torch.device("cuda"), triton=False)] == ["torch"]
    assert [b.name for b in linear_backends(torch.device("cpu"))] == ["torch"]
    triton = linear_backends(torch.device("cuda"))[1]
    assert triton.op is TRITON_LINEAR
    w = _weight(16, 128)
    assert triton.can_run({"input": randn(1, 8, 128), "weight": w, "bias": None})
    assert not triton.can_run({"input": randn(2, 9, 128), "weight": w, "bias": None})


# ---- select_backends: the interpreted kernel stands in for the CUDA one ----------------------------

class Projections(nn.Module):
    """Two projections sharing K = 64 with different N (decided apart), a biased one, then an lm_head."""

    def __init__(self, h: int = 64):
        super().__init__()
        self.up = nn.Linear(h, 128, bias=False)
        self.down = nn.Linear(128, h, bias=True)
        self.gate = nn.Linear(h, h, bias=False)
        self.lm_head = nn.Linear(h, 96, bias=False)

    def forward(self, x):  # x [b, s, h]
        y = self.down(torch.relu(self.up(x))) + self.gate(x)
        return self.lm_head(y)


INPUTS = (torch.randn(2, 8, 64),)  # 16 rows: the kernel, where swapped
SECOND = (torch.randn(3, 7, 64),)  # 21 rows: aten.linear everywhere
DYN = {"x": {0: Dim("b", max=64), 1: Dim("s", max=2048)}}


@pytest.fixture
def gemv_backend(tmp_path, monkeypatch):
    """The op registered as an extra linear backend: select_backends offers Triton only on CUDA."""
    if DEVICE != "cpu":
        pytest.skip("the interpreter stands in for CUDA here; tests/gpu covers the real candidate")
    monkeypatch.setenv("AUTODEPLOY_CACHE", str(tmp_path))
    register_backend("linear", "gemv", TRITON_LINEAR)
    yield tmp_path
    unregister_backend("linear", "gemv")


def _clock(monkeypatch, faster):
    """Fake timing: `faster(weight shape, rows)` says whether the kernel beats cuBLAS there."""
    timed = []

    def measure(cand, inputs, device, warmup=3, reps=10):
        x, w = inputs[0], inputs[1]
        rows = x.numel() // x.shape[-1]
        timed.append((cand.name, tuple(w.shape), rows))
        return 1.0 if (cand.name == "gemv") == faster(tuple(w.shape), rows) else 2.0

    monkeypatch.setattr(autotuner, "measure_candidate", measure)
    return timed


def _max_rows(gm) -> dict[str, int]:
    """{weight name: max_rows} of the swapped sites."""
    return {n.args[1].target: n.args[3] for n in gm.graph.nodes if n.target is TRITON_LINEAR}


def test_select_backends_swaps_where_the_kernel_wins_at_decode(gemv_backend, monkeypatch):
    # up [128, 64] and lm_head [96, 64] win at 1 and 8 rows, gate [64, 64] at 1 row only, down [64, 128] never
    wins = {(128, 64): {1, 8}, (96, 64): {1, 8}, (64, 64): {1}, (64, 128): set()}
    timed = _clock(monkeypatch, lambda shape, rows: rows in wins[shape])
    gm = check_transform(Projections(), INPUTS, "select_backends", before={ATEN_LINEAR: 4, TRITON_LINEAR: 0},
                         after={ATEN_LINEAR: 1, TRITON_LINEAR: 3}, matches=3, second_inputs=SECOND, dynamic_shapes=DYN)
    # the cpu recipe's decode buckets: b = 1 and 8; linears are never timed at prefill sizes
    assert sorted({rows for *_, rows in timed}) == [1, 8] and len(timed) == 4 * 2 * 2
    # gate keeps the kernel up to 2 rows (nearer 1 than 8 in log scale); the others up to its 16
    assert _max_rows(gm) == {"up.weight": 16, "gate.weight": 2, "lm_head.weight": 16}
    entries = json.loads((gemv_backend / "autotune.json").read_text())
    (per_op,) = entries.values()
    assert len(per_op["linear"]) == 8  # 4 weights x 2 row counts


def test_swapped_sites_run_the_kernel_only_at_decode_sizes(gemv_backend, monkeypatch):
    _clock(monkeypatch, lambda shape, rows: True)
    module = Projections()
    gm = check_transform(module, INPUTS, "select_backends", before={ATEN_LINEAR: 4},
                         after={ATEN_LINEAR: 0, TRITON_LINEAR: 4}, matches=4, dynamic_shapes=DYN)
    launched = []
    real = linear.launch
    monkeypatch.setattr(linear, "launch", lambda *a, **kw: launched.append(a[0].shape) or real(*a, **kw))
    with torch.no_grad():
        for shape, kernel_calls in (((1, 1, 64), 4), ((4, 4, 64), 4), ((1, 17, 64), 0), ((2, 300, 64), 0)):
            launched.clear()
            x = torch.randn(*shape)
            assert_close(gm(x), module(x))
            assert len(launched) == kernel_calls, shape


def test_cublas_everywhere_leaves_the_graph_alone(gemv_backend, monkeypatch):
    _clock(monkeypatch, lambda shape, rows: rows > 1)  # the kernel loses at one row: not swapped at all
    check_transform(Projections(), INPUTS, "select_backends", before={ATEN_LINEAR: 4},
                    after={ATEN_LINEAR: 4, TRITON_LINEAR: 0}, matches=0, second_inputs=SECOND, dynamic_shapes=DYN)


def test_no_autotune_keeps_cublas(gemv_backend, monkeypatch):
    from autodeploy.recipe import load_recipe

    timed = _clock(monkeypatch, lambda shape, rows: True)
    recipe = load_recipe("cpu", {"transforms.select_backends.autotune": False})
    check_transform(Projections(), INPUTS, "select_backends", before={ATEN_LINEAR: 4},
                    after={ATEN_LINEAR: 4, TRITON_LINEAR: 0}, matches=0, dynamic_shapes=DYN, recipe=recipe)
    assert timed == []


def test_insert_kv_cache_still_finds_the_swapped_lm_head(gemv_backend, monkeypatch):
    from autodeploy.export.export import _flatten_signature
    from autodeploy.transforms.insert_kv_cache import _lm_head

    _clock(monkeypatch, lambda shape, rows: True)
    gm = check_transform(Projections(), INPUTS, "select_backends", before={ATEN_LINEAR: 4},
                         after={TRITON_LINEAR: 4}, dynamic_shapes=DYN)
    _flatten_signature(gm)  # gm(x) -> logits, as export_model leaves it for insert_kv_cache
    head = _lm_head(gm)
    assert head is not None and head.target is TRITON_LINEAR and head.args[1].target == "lm_head.weight"
