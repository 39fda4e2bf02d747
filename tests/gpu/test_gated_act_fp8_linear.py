"""Gated activation writing per-block amaxes, then the FP8 GEMV quantizing x as it reads it (X_MODE 3), on the
GPU at the Llama-3.1-8B down projection (bf16, 1 and 16 rows, gate / up the halves of one gate_up output): the
activation bit-identical to the activation kernel it replaces, the block amaxes the blockwise max of it, the
output bit-identical to that kernel + fp8_gemv's quantization kernel + GEMV, close to the reference (act,
then torch._scaled_mm) and to fp32 math; Llama-3 70B's F (28 blocks a row), the unfused candidates, a
CUDA-graph capture / replay, and prefill rows on the unfused path.

The small-shape tests in tests/backends/triton/test_gated_act_fp8_linear.py also run here on CUDA."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

if not torch.cuda.is_available():  # also keeps the compiled kernels from being defined on a CPU run
    pytest.skip("needs CUDA", allow_module_level=True)

import autodeploy.backends.triton  # noqa: E402,F401
import autodeploy.ops  # noqa: E402,F401
from autodeploy.backends.triton import gated_mlp  # noqa: E402
from autodeploy.backends.triton import gated_act_fp8_linear as fused  # noqa: E402
from autodeploy.quantization import fp8  # noqa: E402
from autodeploy.quantization.metrics import sqnr  # noqa: E402
from tests.helpers.decode_shapes import SHAPES_8B, activations  # noqa: E402

pytestmark = pytest.mark.gpu
BF16 = torch.bfloat16
OP = torch.ops.autodeploy.triton_gated_act_fp8_linear
REF = torch.ops.autodeploy.gated_act_fp8_linear
DOWN = SHAPES_8B["down"]  # (4096, 14336): [N, F] of the 8B down projection
WIDE = (1024, 28672)  # Llama-3 70B's F (28 blocks of 1024 a row), few output rows to keep it quick


def _operands(m, n, f, bias=False):
    gate_up = 3.0 * activations(m, 2 * f)  # [m, 2F] as the gate_up GEMV writes it; channel 7 of gate an outlier
    gate, up = gate_up.split([f, f], dim=-1)  # views, row stride 2F (the graph's split)
    p = fp8.quantize(torch.randn(n, f, device="cuda") / f**0.5)
    return gate, up, p["weight"], p["weight_scale"], torch.randn(n, device="cuda").to(BF16) if bias else None


def _check(out, gate, up, act, w, s, b):
    """Against the pair the fold replaces (bit for bit), the reference op, and fp32 math on the same codes."""
    assert torch.isfinite(out).all()
    h = gated_mlp.launch(gate, up, act)  # the activation kernel
    assert torch.equal(out, torch.ops.autodeploy.triton_fp8_linear(h, w, s, b))  # quantize kernel + GEMV
    xq, xs = fp8.quantize_rows(h)
    truth = F.linear(xq.float() * xs, fp8.dequantize(w, s), None if b is None else b.float())
    assert sqnr(out, truth) >= 40.0  # exact products; fp32 sums and one bf16 rounding
    # the reference rounds act(gate) before the product (one bf16 ulp apart here and there): a few codes one step off
    assert sqnr(out, REF(gate, up, act, w, s, b)) >= 30.0


@pytest.mark.parametrize("act", ["silu", "gelu_tanh"])
@pytest.mark.parametrize("m", [1, 16])
@pytest.mark.parametrize("shape", [DOWN, WIDE], ids=["8B down", "F=28672: 28 blocks"])
def test_default_config(shape, m, act):
    n, f = shape
    gate, up, w, s, _ = _operands(m, n, f)
    torch.full((16 * m * n,), float("nan"), device="cuda")  # NaNs in the allocator: an unwritten output shows
    h, block_amax = fused.gated_act_block_amax(gate, up, act)  # [m, F], [m, F / 1024]
    assert torch.equal(h, gated_mlp.launch(gate, up, act))
    assert torch.equal(block_amax, h.float().abs().view(m, -1, 1024).amax(-1))
    _check(OP(gate, up, act, w, s, None), gate, up, act, w, s, None)


def test_bias_and_unfused_candidates():
    n, f = DOWN
    gate, up, w, s, b = _operands(3, n, f, bias=True)
    _check(OP(gate, up, "silu", w, s, b), gate, up, "silu", w, s, b)
    for op in (fused.ACT_FP8_GEMV, fused.ACT_SCALED_MM):
        assert sqnr(op(gate, up, "silu", w, s, b, True), REF(gate, up, "silu", w, s, b)) >= 30.0


def test_cuda_graph_capture_and_replay():
    n, f = DOWN
    _, _, w, s, _ = _operands(1, n, f)
    for m in (1, 16):
        gate_up = activations(m, 2 * f)  # [m, 2F]: the buffer the graph reads
        gate, up = gate_up.split([f, f], dim=-1)
        OP(gate, up, "silu", w, s, None)  # compile outside the capture
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            got = OP(gate, up, "silu", w, s, None)  # [m, N] in the graph's pool
        for _ in range(3):
            gate_up.copy_(3.0 * activations(m, 2 * f))
            got.fill_(float("nan"))
            graph.replay()
            torch.cuda.synchronize()
            _check(got, gate, up, "silu", w, s, None)


def test_prefill_rows_take_the_unfused_path():
    n, f = DOWN
    gate, up, w, s, b = _operands(300, n, f, bias=True)
    out = OP(gate.view(3, 100, f), up.view(3, 100, f), "silu", w, s, b)
    assert out.shape == (3, 100, n)
    assert sqnr(out.view(300, n), REF(gate, up, "silu", w, s, b)) >= 30.0  # the act kernel, then torch._scaled_mm
