"""Add + RMSNorm as the decode GEMV's prologue on the GPU, at Llama-3.2-1B / 3.1-8B qkv and gate_up shapes
(bf16, 1 and 16 rows): the fused Triton twins vs their references (fused_add_rmsnorm, then the projection)
and vs fp32 math, the unfused candidates, Gemma's offset, a split K, and a CUDA-graph capture / replay.

The small-shape tests in tests/backends/triton/test_add_rmsnorm_linear.py also run here on CUDA."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

if not torch.cuda.is_available():  # also keeps the compiled kernels from being defined on a CPU run
    pytest.skip("needs CUDA", allow_module_level=True)

import autodeploy.backends.triton  # noqa: E402,F401
import autodeploy.ops  # noqa: E402,F401
from autodeploy.backends.triton import add_rmsnorm_linear as fused  # noqa: E402
from autodeploy.backends.triton import linear  # noqa: E402
from tests.helpers.tolerances import assert_close  # noqa: E402

pytestmark = pytest.mark.gpu
BF16 = torch.bfloat16
EPS = 1e-5
QKV = {"1b": (3072, 2048), "8b": (6144, 4096)}  # weight [N, K]
GATE_UP = {"1b": (16384, 2048), "8b": (28672, 4096)}  # weight [2I, K]


def _operands(m, n, k, bias=False):
    x, res = torch.randn(m, k, device="cuda").to(BF16), (3 * torch.randn(m, k, device="cuda")).to(BF16)
    nw = (torch.rand(k, device="cuda") + 0.5).to(BF16)
    w = (torch.randn(n, k, device="cuda") * k**-0.5).to(BF16)
    return x, res, nw, w, torch.randn(n, device="cuda").to(BF16) if bias else None


def _fp32(x, res, nw, offset, w, b, gated):
    h = (x.float() + res.float()).to(BF16).float()  # the residual add rounds to bf16 first
    scale = (1.0 + nw.float()) if offset else nw.float()
    y = F.linear(h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + EPS) * scale, w.float(),
                 None if b is None else b.float())
    if gated:
        i = w.shape[0] // 2
        y = F.silu(y[:, :i]) * y[:, i:]
    return y, h


def _check(got, x, res, nw, offset, w, b, gated):
    out, h = got
    ref, ref_h = _fp32(x, res, nw, offset, w, b, gated)
    assert torch.isfinite(out).all()
    assert torch.equal(h.float(), ref_h)  # program 0 wrote every row of x + residual
    rel = ((out.float() - ref).norm() / ref.norm()).item()
    assert rel < 1e-2, f"relative error {rel:.2e}"  # bf16 rounding of the normed x and the output is ~4e-3
    args = (x, res, nw, EPS, offset, w, b) + (("silu",) if gated else ())
    ref_op = torch.ops.autodeploy.add_rmsnorm_gated_linear if gated else torch.ops.autodeploy.add_rmsnorm_linear
    assert_close(out, ref_op(*args)[0])  # norm, then cuBLAS (+ act): bf16 tolerance


@pytest.mark.parametrize("offset", [False, True], ids=["llama", "gemma"])
@pytest.mark.parametrize("m", [1, 16])
@pytest.mark.parametrize("model", ["1b", "8b"])
@pytest.mark.parametrize("gated", [False, True], ids=["qkv", "gate_up"])
def test_model_shapes_default_config(gated, model, m, offset):
    n, k = (GATE_UP if gated else QKV)[model]
    x, res, nw, w, _ = _operands(m, n, k)
    torch.full((16 * m * n,), float("nan"), device="cuda")  # NaNs in the allocator: an unwritten output shows
    op = torch.ops.autodeploy.triton_add_rmsnorm_gated_linear if gated else torch.ops.autodeploy.triton_add_rmsnorm_linear
    got = op(x, res, nw, EPS, offset, w, None, *(("silu",) if gated else ()))
    _check(got, x, res, nw, offset, w, None, gated)


@pytest.mark.parametrize("split", [1, 4])
@pytest.mark.parametrize("kind,m", [("fma", 1), ("dot", 5), ("dot_t", 1), ("dot_t", 16)])
def test_every_kind_and_split_with_bias(kind, m, split):
    x, res, nw, w, b = _operands(m, 3072, 2048, bias=True)
    cfg = dict(kind=kind, bn=32, bk=128, split=split, num_warps=4, num_stages=3)
    _check(linear.launch(x, w, b, cfg, norm=(res, nw, EPS, False)), x, res, nw, False, w, b, False)


@pytest.mark.parametrize("gated", [False, True], ids=["qkv", "gate_up"])
def test_unfused_candidates_match(gated):
    n, k = (GATE_UP if gated else QKV)["1b"]
    x, res, nw, w, _ = _operands(1, n, k)
    ops = (fused.NORM_CUBLAS_GATED, fused.NORM_GEMV_GATED) if gated else (fused.NORM_CUBLAS_LINEAR, fused.NORM_GEMV_LINEAR)
    for op in ops:
        _check(op(x, res, nw, EPS, False, w, None, *(("silu",) if gated else ())), x, res, nw, False, w, None, gated)


def test_cuda_graph_capture_and_replay():
    n, k = QKV["1b"]
    _, _, nw, w, _ = _operands(1, n, k)
    op = torch.ops.autodeploy.triton_add_rmsnorm_linear
    for m in (1, 16):
        x, res = torch.randn(m, k, device="cuda").to(BF16), torch.randn(m, k, device="cuda").to(BF16)
        op(x, res, nw, EPS, False, w, None)  # compile outside the capture
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            got = op(x, res, nw, EPS, False, w, None)  # [m, N], [m, K] in the graph's pool
        for _ in range(3):
            x.copy_(torch.randn(m, k, device="cuda").to(BF16))
            res.copy_(torch.randn(m, k, device="cuda").to(BF16))
            got[0].fill_(float("nan"))
            got[1].fill_(float("nan"))
            graph.replay()
            torch.cuda.synchronize()
            _check(got, x, res, nw, False, w, None, False)


def test_prefill_rows_take_the_unfused_path():
    x, res, nw, w, b = _operands(300, 3072, 2048, bias=True)
    out, h = torch.ops.autodeploy.triton_add_rmsnorm_linear(x.view(3, 100, 2048), res.view(3, 100, 2048), nw, EPS,
                                                            False, w, b)
    assert out.shape == (3, 100, 3072) and h.shape == (3, 100, 2048)
    _check((out.view(300, 3072), h.view(300, 2048)), x, res, nw, False, w, b, False)
