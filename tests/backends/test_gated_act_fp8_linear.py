"""autodeploy::gated_act_fp8_linear reference vs the pair it replaces: autodeploy::gated_mlp_act, then
autodeploy::fp8_linear of the activation (bit-exact), and its fake implementation."""

from __future__ import annotations

import pytest
import torch

import autodeploy.ops  # noqa: F401
from autodeploy.quantization import fp8

OP = torch.ops.autodeploy.gated_act_fp8_linear
ACT = torch.ops.autodeploy.gated_mlp_act
FP8_LINEAR = torch.ops.autodeploy.fp8_linear


def _operands(*lead, f=96, n=24, dtype=torch.float32, bias=False, granularity="per_channel"):
    g = torch.Generator().manual_seed(0)
    gate_up = (3.0 * torch.randn(*lead, 2 * f, generator=g)).to(dtype)  # [.., 2F]: one fused GEMM's output
    gate, up = gate_up.split([f, f], dim=-1)  # views, as the graph's split gives them
    p = fp8.quantize(torch.randn(n, f, generator=g) / f**0.5, granularity)
    b = torch.randn(n, generator=g).to(dtype) if bias else None
    return gate, up, p["weight"], p["weight_scale"], b


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("act", ["silu", "gelu_tanh", "gelu"])
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("quantize_input", [True, False], ids=["dynamic", "weight_only"])
def test_bit_identical_to_act_then_fp8_linear(quantize_input, bias, act, dtype):
    gate, up, w, s, b = _operands(2, 5, dtype=dtype, bias=bias)
    out = OP(gate, up, act, w, s, b, quantize_input)
    assert out.shape == (2, 5, 24) and out.dtype == dtype
    assert torch.equal(out, FP8_LINEAR(ACT(gate, up, act), w, s, b, quantize_input))


def test_per_tensor_scale_and_defaults():
    gate, up, w, s, _ = _operands(3, granularity="per_tensor")
    assert s.dim() == 0
    out = OP(gate, up, "silu", w, s)  # bias None, quantize_input True by default
    assert torch.equal(out, FP8_LINEAR(ACT(gate, up, "silu"), w, s, None, True))


def test_opcheck_fake():
    # (test_schema: the CPU reference reads e4m3 operands the way opcheck's checks cannot; see test_fp8_gemv.py)
    gate, up, w, s, b = _operands(2, 3, bias=True)
    for quantize_input in (True, False):
        torch.library.opcheck(OP.default, (gate, up, "silu", w, s, b, quantize_input),
                              test_utils=("test_faketensor",))
