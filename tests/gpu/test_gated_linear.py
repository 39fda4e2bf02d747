"""Triton gated projection on the GPU at Llama-3.2-1B / Llama-3.1-8B gate_up shapes (bf16, M = 1 and 16
rows) against cuBLAS + activation and an fp32 reference, every launch kind, and inside a CUDA-graph
capture / replay.

The small-shape tests in tests/backends/triton/test_gated_linear.py also run here on CUDA."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

if not torch.cuda.is_available():  # also keeps the compiled kernels from being defined on a CPU run
    pytest.skip("needs CUDA", allow_module_level=True)

import autodeploy.backends.triton  # noqa: E402,F401
import autodeploy.ops  # noqa: E402,F401
from autodeploy.backends.triton import gated_linear  # noqa: E402
from tests.helpers.tolerances import assert_close  # noqa: E402

pytestmark = pytest.mark.gpu
BF16 = torch.bfloat16
GATE_UP = {"1b": (8192, 2048), "8b": (14336, 4096)}  # (I, K): weight [2I, K]
ACTS = {"silu": F.silu, "gelu_tanh": lambda g: F.gelu(g, approximate="tanh")}


def _operands(m, i, k, dtype=BF16, bias=False):
    x = torch.randn(m, k, device="cuda").to(dtype)
    w = (torch.randn(2 * i, k, device="cuda") * k**-0.5).to(dtype)
    b = torch.randn(2 * i, device="cuda").to(dtype) if bias else None
    return x, w, b


def _check(out, x, w, b, act="silu"):
    i = w.shape[0] // 2
    y = F.linear(x.float(), w.float(), None if b is None else b.float())  # fp32 products
    ref = ACTS[act](y[:, :i]) * y[:, i:]
    assert torch.isfinite(out).all()
    rel = ((out.float() - ref).norm() / ref.norm()).item()
    assert rel < 1e-2, f"relative error {rel:.2e}"  # bf16 output rounding is ~4e-3
    assert_close(out, torch.ops.autodeploy.gated_linear(x, w, b, act))  # cuBLAS + act, bf16 tolerance


@pytest.mark.parametrize("act", list(ACTS))
@pytest.mark.parametrize("m", [1, 16])
@pytest.mark.parametrize("model", list(GATE_UP))
def test_model_shapes_default_config(model, m, act):
    i, k = GATE_UP[model]
    x, w, _ = _operands(m, i, k)
    torch.full((16 * m * i,), float("nan"), device="cuda")  # NaNs in the allocator: an unwritten output shows
    _check(torch.ops.autodeploy.triton_gated_linear(x, w, None, act), x, w, None, act)


@pytest.mark.parametrize("split", [1, 4])
@pytest.mark.parametrize("kind,m", [("fma", 1), ("dot", 5), ("dot_t", 1), ("dot_t", 16)])
def test_every_kind_and_split_with_bias(kind, m, split):
    x, w, b = _operands(m, 8192, 2048, bias=True)
    cfg = dict(kind=kind, bn=32, bk=128, split=split, num_warps=4, num_stages=3)
    _check(gated_linear.launch(x, w, b, "silu", cfg), x, w, b)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_other_dtypes(dtype):
    x, w, b = _operands(4, 2048, 2048, dtype=dtype, bias=True)
    assert_close(torch.ops.autodeploy.triton_gated_linear(x, w, b, "silu"),
                 torch.ops.autodeploy.gated_linear(x, w, b, "silu"))


def test_cuda_graph_capture_and_replay():
    i, k = GATE_UP["1b"]
    _, w, _ = _operands(1, i, k)
    for m in (1, 16):
        x = torch.randn(m, k, device="cuda").to(BF16)
        torch.ops.autodeploy.triton_gated_linear(x, w, None, "silu")  # compile outside the capture
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = torch.ops.autodeploy.triton_gated_linear(x, w, None, "silu")  # [m, I] in the graph's pool
        for _ in range(3):
            x.copy_(torch.randn(m, k, device="cuda").to(BF16))
            out.fill_(float("nan"))
            graph.replay()
            torch.cuda.synchronize()
            _check(out, x, w, None)


def test_prefill_rows_take_cublas_and_match():
    x, w, b = _operands(300, 2048, 2048, bias=True)
    out = torch.ops.autodeploy.triton_gated_linear(x.view(3, 100, 2048), w, b, "silu")
    assert out.shape == (3, 100, 2048)
    _check(out.view(300, 2048), x, w, b)
