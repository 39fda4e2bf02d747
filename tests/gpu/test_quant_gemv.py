"""Quantized decode GEMVs on the GPU at Llama-3.1-8B shapes (M = 1 and 16 rows): the FP8 GEMV
(autodeploy::triton_fp8_linear) in each activation / product mode, and the INT4 GEMV (int4_gemv.py)
in each tile and code conversion, against fp32 references, the old kernels, and inside CUDA graphs.

The small-shape tests of tests/backends/triton/test_fp8_gemv.py and test_int4_gemm.py also run on CUDA."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

if not torch.cuda.is_available():  # also keeps the compiled kernels from being defined on a CPU run
    pytest.skip("needs CUDA", allow_module_level=True)

import autodeploy.backends.triton  # noqa: E402,F401
import autodeploy.ops  # noqa: E402,F401
from autodeploy.backends.triton import fp8_gemv, int4_gemm, int4_gemv  # noqa: E402
from autodeploy.quantization import fp8, int4  # noqa: E402
from autodeploy.quantization.metrics import sqnr  # noqa: E402
from tests.helpers.decode_shapes import SHAPES_8B as SHAPES  # noqa: E402
from tests.helpers.decode_shapes import activations as _x  # noqa: E402
from tests.helpers.tolerances import assert_close  # noqa: E402

pytestmark = pytest.mark.gpu
BF16 = torch.bfloat16


def _fp8(n, k, granularity="per_channel"):
    p = fp8.quantize(torch.randn(n, k, device="cuda") / k**0.5, granularity)
    return p["weight"], p["weight_scale"]


def _fp8_truth(x, w, s):
    """The same e4m3 operands (fp8.quantize_rows of x), multiplied in fp32: what the GEMV computes."""
    xq, xs = fp8.quantize_rows(x.reshape(-1, x.shape[-1]))
    return F.linear(xq.float() * xs, fp8.dequantize(w, s))


def _poison_allocator(numel: int) -> None:
    torch.full((numel,), float("nan"), device="cuda", dtype=torch.float32)


@pytest.mark.parametrize("m", [1, 16])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_fp8_model_shapes_default_config(shape, m):
    n, k = SHAPES[shape]
    w, s = _fp8(n, k)
    x = _x(m, k)
    _poison_allocator(16 * m * n)
    got = torch.ops.autodeploy.triton_fp8_linear(x, w, s)
    assert torch.isfinite(got).all() and got.dtype == BF16
    assert sqnr(got, _fp8_truth(x, w, s)) >= 40.0  # exact products; fp32 sums and one bf16 rounding
    # torch._scaled_mm (the reference on Hopper) reads the same operands: "the same e4m3 operands" bar
    assert sqnr(got, torch.ops.autodeploy.fp8_linear(x, w, s)) >= 35.0
    assert sqnr(got.float(), F.linear(x.float(), fp8.dequantize(w, s))) >= 25.0  # vs unquantized x


@pytest.mark.parametrize("x_prologue", [False, True])
@pytest.mark.parametrize("fp8_dot", [True, False])
@pytest.mark.parametrize("m", [1, 5, 16])
def test_fp8_every_mode(m, fp8_dot, x_prologue):
    w, s = _fp8(6144, 4096)
    x = _x(m, 4096)
    b = torch.randn(6144, device="cuda").to(BF16)
    for bn, split in [(16, 1), (32, 1), (64, 1), (32, 4)]:
        cfg = dict(bn=bn, bk=256, split=split, num_warps=4, num_stages=4, x_prologue=x_prologue, fp8_dot=fp8_dot)
        got = fp8_gemv.launch(x, w, s, b, True, cfg)
        assert sqnr(got, _fp8_truth(x, w, s) + b.float()) >= 40.0, cfg


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_fp8_other_dtypes_per_tensor_and_weight_only(dtype):
    w, s = _fp8(4096, 4096, "per_tensor")
    x = _x(3, 4096, dtype)
    assert sqnr(torch.ops.autodeploy.triton_fp8_linear(x, w, s), _fp8_truth(x.float(), w, s)) >= 40.0
    weight_only = torch.ops.autodeploy.triton_fp8_linear(x, w, s, None, False)
    assert sqnr(weight_only, F.linear(x.float(), fp8.dequantize(w, s))) >= 40.0


def test_fp8_prefill_rows_take_scaled_mm():
    w, s = _fp8(4096, 4096)
    x = _x(300, 4096)
    assert torch.equal(torch.ops.autodeploy.triton_fp8_linear(x, w, s), torch.ops.autodeploy.fp8_linear(x, w, s))


@pytest.mark.parametrize("shape", ["o", "k"])  # k: split K, partials summed inside the graph
@pytest.mark.parametrize("m", [1, 16])  # 1: x quantized in the kernel; 16: by the prologue kernel
def test_fp8_cuda_graph_capture_and_replay(m, shape):
    n, k = SHAPES[shape]
    w, s = _fp8(n, k)
    x = _x(m, k)
    op = torch.ops.autodeploy.triton_fp8_linear
    op(x, w, s)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = op(x, w, s)
    for _ in range(2):
        x.copy_(_x(m, k))
        out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        assert sqnr(out, _fp8_truth(x, w, s)) >= 40.0


def _int4(n, k, g=128, dtype=BF16):
    p = int4.quantize(torch.randn(n, k, device="cuda") / k**0.5, g)
    return p["qweight"], p["scales"].to(dtype), p["zeros"].to(dtype)


def _int4_truth(x, qw, s, z, g):
    return F.linear(x.float(), int4.dequantize(qw, s, z, g, torch.float32))


@pytest.mark.parametrize("m", [1, 16])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_int4_gemv_model_shapes_default_config(shape, m):
    n, k = SHAPES[shape]
    qw, s, z = _int4(n, k)
    x = _x(m, k)
    assert int4_gemv.unsupported_reason(x, qw, 128) is None
    _poison_allocator(16 * m * n)
    got = torch.ops.autodeploy.triton_int4_wo_linear(x, qw, s, z, None, 128)
    assert torch.isfinite(got).all()
    assert sqnr(got, _int4_truth(x, qw, s, z, 128)) >= 40.0
    want = torch.ops.autodeploy.int4_wo_linear(x, qw, s, z, None, 128)  # bf16 weights, cuBLAS
    assert sqnr(got, want) >= 40.0
    assert_close(got, want)


@pytest.mark.parametrize("magic", [True, False])
@pytest.mark.parametrize("m", [1, 5, 16])
def test_int4_gemv_every_tile(m, magic):
    qw, s, z = _int4(6144, 4096)
    x = _x(m, 4096)
    b = torch.randn(6144, device="cuda").to(BF16)
    truth = _int4_truth(x, qw, s, z, 128) + b.float()
    for bn, bk, warps, stages, split in [(16, 128, 4, 8, 1), (32, 64, 4, 6, 1), (64, 128, 4, 4, 1),
                                         (128, 128, 8, 3, 1), (32, 128, 4, 4, 3)]:
        cfg = dict(kind="gemv", bn=bn, bk=bk, split=split, num_warps=warps, num_stages=stages, magic=magic)
        assert sqnr(int4_gemm.launch(x, qw, s, z, b, 128, cfg), truth) >= 40.0, cfg


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("g", [32, 64])
def test_int4_gemv_small_groups_and_dtypes(g, dtype):
    qw, s, z = _int4(2048, 4096, g, dtype)
    x = _x(2, 4096, dtype)
    got = int4_gemm.launch(x, qw, s, z, None, g)
    assert sqnr(got, _int4_truth(x, qw, s, z, g)) >= 40.0
    assert_close(got, torch.ops.autodeploy.int4_wo_linear(x, qw, s, z, None, g))


def test_int4_gemv_and_old_kernel_agree():
    qw, s, z = _int4(4096, 14336)
    x = _x(1, 14336)
    old = int4_gemm.launch(x, qw, s, z, None, 128, int4_gemm.launch_config(1, 4096, 7168, 128, 132))
    new = int4_gemm.launch(x, qw, s, z, None, 128)
    assert sqnr(new, old) >= 40.0
