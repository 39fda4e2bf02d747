"""Triton gated projection (autodeploy::triton_gated_linear) vs the reference autodeploy::gated_linear:
the GEMV kernel up to 16 rows (every kind, split K, bias, silu / gelu_tanh / gelu), cuBLAS + the
Triton activation above, and the default launch config at Llama shapes.

Interpreted on CPU: fp32 for every kind; bf16 for the "fma" kind only (the interpreter's tl.dot
returns garbage for bf16 operands in triton 3.9, for linear.py's kernel too). On CUDA every dtype."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import autodeploy.ops  # noqa: F401
from autodeploy.backends.triton import gated_linear, linear
from tests.backends.triton.cases import dtypes, randn
from tests.helpers.tolerances import assert_close

reference = torch.ops.autodeploy.gated_linear
TRITON = torch.ops.autodeploy.triton_gated_linear


def _operands(m, i, k, dtype=torch.float32, bias=False):
    w = randn(2 * i, k, dtype=dtype, scale=2 * k**-0.5)  # gate inputs ~ N(0, 4 |x|^2 / K): the act's curve matters
    b = randn(2 * i, dtype=dtype) if bias else None
    return randn(m, k, dtype=dtype), w, b


def _config(kind, split=1, bn=16, bk=64):
    return dict(kind=kind, bn=bn, bk=bk, split=split, num_warps=4, num_stages=2)


@dtypes
@pytest.mark.parametrize("act", ["silu", "gelu_tanh", "gelu"])
@pytest.mark.parametrize("kind", ["fma", "dot", "dot_t"])
@pytest.mark.parametrize("m", [1, 3, 16])
@pytest.mark.parametrize("bias", [False, True])
def test_matches_reference(bias, m, kind, act, dtype):
    # I = 37: the last 16-column tile is 5 wide (gate and up masked alike); K = 192 = 3 BK steps
    x, w, b = _operands(m, 37, 192, dtype, bias)
    out = gated_linear.launch(x, w, b, act, _config(kind))
    assert out.shape == (m, 37) and out.dtype == dtype
    assert_close(out, reference(x, w, b, act))


@pytest.mark.parametrize("act", ["silu", "gelu_tanh"])
@pytest.mark.parametrize("m", [1, 16])
@pytest.mark.parametrize("bias", [False, True])
def test_bf16_epilogue(bias, m, act):
    # the fp32 accumulators activated and rounded once to bf16 ("fma": the interpreter's bf16 tl.dot is broken)
    x, w, b = _operands(m, 40, 128, torch.bfloat16, bias)
    out = gated_linear.launch(x, w, b, act, _config("fma"))
    assert out.dtype == torch.bfloat16
    assert_close(out, reference(x, w, b, act))


@dtypes
@pytest.mark.parametrize("kind", ["fma", "dot_t"])
@pytest.mark.parametrize("split", [2, 3, 5])
def test_split_k_partials_activate_after_the_sum(split, kind, dtype):
    # K = 320 = 5 BK steps; bias added once, the activation applied to the summed gate only
    x, w, b = _operands(3, 45, 320, dtype, bias=True)
    cfg = linear.normalized(_config(kind, split), 3, 45, 320)
    assert cfg["split"] == split
    assert_close(gated_linear.launch(x, w, b, "gelu_tanh", _config(kind, split)), reference(x, w, b, "gelu_tanh"))


@dtypes
def test_default_config_leading_dims_and_strided_input(dtype):
    _, w, b = _operands(1, 50, 128, dtype, bias=True)
    x = randn(2, 3, 200, dtype=dtype)[..., 10:138]  # a strided view of the activations: 6 rows
    out = TRITON(x, w, b, "silu")
    assert out.shape == (2, 3, 50)
    assert_close(out, reference(x.contiguous(), w, b, "silu"))


def test_rows_above_16_take_cublas_and_the_triton_activation(monkeypatch):
    launched = []
    real = gated_linear.launch
    monkeypatch.setattr(gated_linear, "launch", lambda *a, **kw: launched.append(a[0].shape) or real(*a, **kw))
    _, w, b = _operands(1, 24, 64, bias=True)
    for shape, kernel in [((16, 64), True), ((1, 16, 64), True), ((17, 64), False), ((2, 40, 64), False)]:
        launched.clear()
        x = randn(*shape)
        assert_close(TRITON(x, w, b, "gelu"), reference(x, w, b, "gelu"))
        assert bool(launched) == kernel, shape


def test_no_rows():
    _, w, _ = _operands(1, 8, 64)
    assert gated_linear.launch(randn(0, 64), w).shape == (0, 8)
    assert TRITON(randn(2, 0, 64), w, None, "silu").shape == (2, 0, 8)


def test_unsupported():
    x, w, b = _operands(2, 16, 128, bias=True)
    assert gated_linear.supports(x, w, b, "silu") and gated_linear.supports(randn(40, 128), w, None, "gelu")
    assert gated_linear.unsupported_reason(randn(17, 128), w) is not None  # prefill: not the kernel's
    assert not gated_linear.supports(x, w, b, "relu")
    assert not gated_linear.supports(x, w[:31], None, "silu")  # odd width
    assert not gated_linear.supports(randn(2, 96), _operands(1, 16, 96)[1], None, "silu")  # K % 64
    assert not gated_linear.supports(x, w, b[:16], "silu")  # bias shape
    assert not gated_linear.supports(x, w.half(), None, "silu")  # dtypes differ
    with pytest.raises(NotImplementedError, match="rows"):
        gated_linear.launch(randn(17, 128), w)
    with pytest.raises(NotImplementedError, match="activation"):
        TRITON(x, w, b, "relu")


LLAMA_GATE_UP = {"1b": (8192, 2048), "8b": (14336, 4096)}  # (I, K) of Llama-3.2-1B / Llama-3.1-8B


@pytest.mark.parametrize("itemsize", [2, 4])
@pytest.mark.parametrize("m", [1, 16])
@pytest.mark.parametrize("model", list(LLAMA_GATE_UP))
def test_launch_config_keeps_linear_bytes_per_program(model, m, itemsize):
    i, k = LLAMA_GATE_UP[model]
    cfg = gated_linear.launch_config(m, i, k, 132, itemsize)  # an H100
    bn, bk, _ = linear.streaming_tiles(2 * i, k, 132, itemsize)
    assert cfg["kind"] == "dot_t" and 2 * cfg["bn"] == bn and cfg["bk"] == bk
    assert -(-i // cfg["bn"]) == -(-2 * i // bn)  # the same number of programs
    assert cfg["split"] == 1 and k % cfg["bk"] == 0
    # two weight tiles and the x tile per stage stay well inside the 227 KB an H100 block may take
    assert (2 * cfg["bn"] + cfg["bm"]) * cfg["bk"] * itemsize * cfg["num_stages"] <= 160 * 1024


def test_opcheck_fake_and_schema():
    x, w, b = _operands(3, 16, 64, bias=True)
    torch.library.opcheck(TRITON.default, (x, w, b, "silu"), test_utils=("test_schema", "test_faketensor"))
    assert str(TRITON.default._schema).split("(", 1)[1] == str(reference.default._schema).split("(", 1)[1]


def test_matches_unfused_linear_then_activation():
    # what fuse_gated_linear replaced: F.linear -> halves -> act(gate) * up
    x, w, b = _operands(4, 48, 256, bias=True)
    y = F.linear(x, w, b)
    assert_close(TRITON(x, w, b, "silu"), F.silu(y[:, :48]) * y[:, 48:])


@pytest.mark.parametrize("act", ["silu", "gelu_tanh"])
@pytest.mark.parametrize("shape", [(1, 64), (3, 5, 64)])
def test_cublas_plus_triton_act_backend(shape, act):
    """The unfused candidate (cuBLAS GEMM, Triton act over the two halves) matches the reference and is
    offered to the tuner on CUDA only."""
    from autodeploy.profiler.candidates import backends_for

    _, w, b = _operands(1, 24, 64, bias=True)
    x = randn(*shape)
    assert_close(torch.ops.autodeploy.cublas_gated_linear(x, w, b, act), reference(x, w, b, act))
    names = lambda d: [bk.name for bk in backends_for(reference.default, torch.device(d))]  # noqa: E731
    assert "cublas+triton_act" in names("cuda") and "cublas+triton_act" not in names("cpu")
