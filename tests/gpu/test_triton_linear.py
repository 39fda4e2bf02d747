"""Triton decode linear on the GPU at Llama-3.2-1B / Llama-3.1-8B layer shapes (bf16, M = 1 and 16 rows)
against cuBLAS and an fp32 reference, every launch kind, and inside a CUDA-graph capture / replay.

The small-shape tests in tests/backends/triton/test_linear.py also run here on CUDA."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

if not torch.cuda.is_available():  # also keeps the compiled kernels from being defined on a CPU run
    pytest.skip("needs CUDA", allow_module_level=True)

import autodeploy.backends.triton  # noqa: E402,F401
from autodeploy.backends.triton import linear  # noqa: E402
from tests.helpers.tolerances import assert_close  # noqa: E402

pytestmark = pytest.mark.gpu
BF16 = torch.bfloat16
VOCAB = 128256
# name: (N, K) of each weight GEMM of a decode step (qkv and gate_up fused, as fuse_gemms leaves them)
LAYERS = {
    "1b_qkv": (3072, 2048), "1b_o": (2048, 2048), "1b_gate_up": (16384, 2048), "1b_down": (2048, 8192),
    "1b_lm_head": (VOCAB, 2048),
    "8b_qkv": (6144, 4096), "8b_o": (4096, 4096), "8b_gate_up": (28672, 4096), "8b_down": (4096, 14336),
    "8b_lm_head": (VOCAB, 4096),
}


def _operands(m, n, k, dtype=BF16, bias=False):
    x = torch.randn(m, k, device="cuda").to(dtype)
    w = (torch.randn(n, k, device="cuda") * k**-0.5).to(dtype)
    b = torch.randn(n, device="cuda").to(dtype) if bias else None
    return x, w, b


def _poison_allocator(numel: int) -> None:
    """Leave NaNs in the caching allocator's free blocks, so an output element never written shows up."""
    torch.full((numel,), float("nan"), device="cuda", dtype=torch.float32)


def _check(out, x, w, b):
    ref = F.linear(x.float(), w.float(), None if b is None else b.float())  # fp32 products, one rounding
    assert torch.isfinite(out).all()
    rel = ((out.float() - ref).norm() / ref.norm()).item()
    assert rel < 1e-2, f"relative error {rel:.2e}"  # bf16 output rounding is ~4e-3
    assert_close(out, F.linear(x, w, b))  # cuBLAS, with the bf16 tolerance


@pytest.mark.parametrize("m", [1, 16])
@pytest.mark.parametrize("layer", list(LAYERS))
def test_model_shapes_default_config(layer, m):
    n, k = LAYERS[layer]
    x, w, b = _operands(m, n, k)
    _poison_allocator(16 * m * n)
    _check(torch.ops.autodeploy.triton_linear(x, w), x, w, None)


@pytest.mark.parametrize("split", [1, 4])
@pytest.mark.parametrize("kind,m", [("fma", 1), ("fma", 3), ("dot", 5), ("dot", 16), ("dot_t", 1), ("dot_t", 16)])
def test_every_kind_and_split_with_bias(kind, m, split):
    x, w, b = _operands(m, 3072, 2048, bias=True)
    _poison_allocator(16 * m * 3072)
    cfg = dict(kind=kind, bn=32, bk=128, split=split, num_warps=4, num_stages=3)
    _check(linear.launch(x, w, b, cfg), x, w, b)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_other_dtypes(dtype):
    x, w, b = _operands(4, 2048, 2048, dtype=dtype, bias=True)
    assert_close(torch.ops.autodeploy.triton_linear(x, w, b), F.linear(x, w, b))


@pytest.mark.parametrize("layer", ["1b_qkv", "1b_down", "8b_o"])
def test_cuda_graph_capture_and_replay(layer):
    n, k = LAYERS[layer]
    _, w, _ = _operands(1, n, k)
    for m in (1, 16):
        x = torch.randn(m, k, device="cuda").to(BF16)
        torch.ops.autodeploy.triton_linear(x, w)  # compile outside the capture
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = torch.ops.autodeploy.triton_linear(x, w)  # [m, n] in the graph's pool
        for _ in range(3):  # new inputs in the captured buffer: the replay reads them
            x.copy_(torch.randn(m, k, device="cuda").to(BF16))
            out.fill_(float("nan"))
            graph.replay()
            torch.cuda.synchronize()
            _check(out, x, w, None)


def test_prefill_rows_take_cublas_and_match():
    x, w, b = _operands(300, 2048, 2048, bias=True)
    out = torch.ops.autodeploy.triton_linear(x.view(3, 100, 2048), w, b)
    assert torch.equal(out, F.linear(x.view(3, 100, 2048), w, b))  # the same cuBLAS call
