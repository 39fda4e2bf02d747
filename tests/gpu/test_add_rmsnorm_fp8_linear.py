"""Add + RMSNorm + per-token e4m3 quantization in one kernel before the FP8 GEMV, on the GPU at Llama-3.1-8B
qkv and gate_up shapes (bf16, 1 and 16 rows): the codes, scales and new residual bit-identical to the norm
kernel + fp8_gemv's quantization kernel they replace, the output bit-identical to that pair's GEMV, close to
the reference (norm, then torch._scaled_mm) and to fp32 math; the unfused candidates, a CUDA-graph capture /
replay, and prefill rows on the unfused path.

The small-shape tests in tests/backends/triton/test_add_rmsnorm_fp8_linear.py also run here on CUDA."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

if not torch.cuda.is_available():  # also keeps the compiled kernels from being defined on a CPU run
    pytest.skip("needs CUDA", allow_module_level=True)

import autodeploy.backends.triton  # noqa: E402,F401
import autodeploy.ops  # noqa: E402,F401
from autodeploy.backends.triton import add_rmsnorm_fp8_linear as fused  # noqa: E402
from autodeploy.backends.triton import fp8_gemv, rmsnorm  # noqa: E402
from autodeploy.quantization import fp8  # noqa: E402
from autodeploy.quantization.metrics import sqnr  # noqa: E402

pytestmark = pytest.mark.gpu
BF16 = torch.bfloat16
EPS = 1e-5
SHAPES = {"qkv": (6144, 4096), "gate_up": (28672, 4096)}  # 8B weights [N, K] after the norms
OP = torch.ops.autodeploy.triton_add_rmsnorm_fp8_linear
REF = torch.ops.autodeploy.add_rmsnorm_fp8_linear


def _operands(m, n, k, bias=False):
    x, res = torch.randn(m, k, device="cuda").to(BF16), (3 * torch.randn(m, k, device="cuda")).to(BF16)
    x[:, 7] *= 25.0  # an outlier channel sets each token's scale
    nw = (torch.rand(k, device="cuda") + 0.5).to(BF16)
    p = fp8.quantize(torch.randn(n, k, device="cuda") / k**0.5)
    return x, res, nw, p["weight"], p["weight_scale"], torch.randn(n, device="cuda").to(BF16) if bias else None


def _bits(q):
    return q.view(torch.uint8)


def _check(got, x, res, nw, offset, w, s, b):
    """Against the pair the fold replaces (bit for bit), the reference op, and fp32 math on the same codes."""
    out, h = got
    assert torch.isfinite(out).all()
    normed, ref_h = rmsnorm.launch(x, nw, EPS, offset, residual=res)  # the norm kernel
    assert torch.equal(h, ref_h) and torch.equal(h, x + res)
    assert torch.equal(out, torch.ops.autodeploy.triton_fp8_linear(normed, w, s, b))  # quantize kernel + GEMV
    xq, xs = fp8.quantize_rows(normed)
    truth = F.linear(xq.float() * xs, fp8.dequantize(w, s), None if b is None else b.float())
    assert sqnr(out, truth) >= 40.0  # exact products; fp32 sums and one bf16 rounding
    # the reference rounds the normed row twice (one bf16 ulp apart here and there): a few codes one step off
    assert sqnr(out, REF(x, res, nw, EPS, offset, w, s, b)[0]) >= 30.0


@pytest.mark.parametrize("offset", [False, True], ids=["llama", "gemma"])
@pytest.mark.parametrize("m", [1, 16])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_8b_shapes_default_config(shape, m, offset):
    n, k = SHAPES[shape]
    x, res, nw, w, s, _ = _operands(m, n, k)
    torch.full((16 * m * n,), float("nan"), device="cuda")  # NaNs in the allocator: an unwritten output shows
    xq, xs, h = fused.add_rmsnorm_quantize(x, res, nw, EPS, offset)
    normed, _ = rmsnorm.launch(x, nw, EPS, offset, residual=res)
    q_kernel, s_kernel = fp8_gemv.quantize_rows(normed)
    assert torch.equal(_bits(xq), _bits(q_kernel)) and torch.equal(xs, s_kernel) and torch.equal(h, x + res)
    _check(OP(x, res, nw, EPS, offset, w, s, None), x, res, nw, offset, w, s, None)


def test_bias_and_unfused_candidates():
    n, k = SHAPES["qkv"]
    x, res, nw, w, s, b = _operands(3, n, k, bias=True)
    _check(OP(x, res, nw, EPS, False, w, s, b), x, res, nw, False, w, s, b)
    for op in (fused.NORM_FP8_GEMV, fused.NORM_SCALED_MM):
        out, h = op(x, res, nw, EPS, False, w, s, b, True)
        assert torch.equal(h, x + res)
        assert sqnr(out, REF(x, res, nw, EPS, False, w, s, b)[0]) >= 30.0


def test_cuda_graph_capture_and_replay():
    n, k = SHAPES["qkv"]
    _, _, nw, w, s, _ = _operands(1, n, k)
    for m in (1, 16):
        x, res = torch.randn(m, k, device="cuda").to(BF16), torch.randn(m, k, device="cuda").to(BF16)
        OP(x, res, nw, EPS, False, w, s, None)  # compile outside the capture
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            got = OP(x, res, nw, EPS, False, w, s, None)  # [m, N], [m, K] in the graph's pool
        for _ in range(3):
            x.copy_(torch.randn(m, k, device="cuda").to(BF16))
            res.copy_(torch.randn(m, k, device="cuda").to(BF16))
            got[0].fill_(float("nan"))
            got[1].fill_(float("nan"))
            graph.replay()
            torch.cuda.synchronize()
            _check(got, x, res, nw, False, w, s, None)


def test_prefill_rows_take_the_unfused_path():
    n, k = SHAPES["qkv"]
    x, res, nw, w, s, b = _operands(300, n, k, bias=True)
    out, h = OP(x.view(3, 100, k), res.view(3, 100, k), nw, EPS, False, w, s, b)
    assert out.shape == (3, 100, n) and h.shape == (3, 100, k)
    ref_out, ref_h = REF(x, res, nw, EPS, False, w, s, b)  # the norm kernel, then torch._scaled_mm
    assert torch.equal(h.view(300, k), ref_h)
    assert sqnr(out.view(300, n), ref_out) >= 30.0
