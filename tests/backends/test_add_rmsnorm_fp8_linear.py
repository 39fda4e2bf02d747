"""autodeploy::add_rmsnorm_fp8_linear reference vs the pair it replaces: autodeploy::fused_add_rmsnorm, then
autodeploy::fp8_linear of the normed output (bit-exact), and its fake implementation."""

from __future__ import annotations

import pytest
import torch

import autodeploy.ops  # noqa: F401
from autodeploy.quantization import fp8

OP = torch.ops.autodeploy.add_rmsnorm_fp8_linear
NORM = torch.ops.autodeploy.fused_add_rmsnorm
FP8_LINEAR = torch.ops.autodeploy.fp8_linear
EPS = 1e-5


def _operands(*lead, k=64, n=24, dtype=torch.float32, bias=False, granularity="per_channel"):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*lead, k, generator=g).to(dtype)
    residual = (4.0 * torch.randn(*lead, k, generator=g)).to(dtype)  # the stream grows larger than a branch
    nw = (torch.rand(k, generator=g) + 0.5).to(dtype)  # [K]
    p = fp8.quantize(torch.randn(n, k, generator=g) / k**0.5, granularity)
    b = torch.randn(n, generator=g).to(dtype) if bias else None
    return x, residual, nw, p["weight"], p["weight_scale"], b


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("offset", [False, True], ids=["llama", "gemma"])
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("quantize_input", [True, False], ids=["dynamic", "weight_only"])
def test_bit_identical_to_norm_then_fp8_linear(quantize_input, bias, offset, dtype):
    x, res, nw, w, s, b = _operands(2, 5, dtype=dtype, bias=bias)
    out, h = OP(x, res, nw, EPS, offset, w, s, b, quantize_input)
    normed, ref_h = NORM(x, res, nw, EPS, offset)
    assert out.shape == (2, 5, 24) and h.shape == (2, 5, 64) and out.dtype == h.dtype == dtype
    assert torch.equal(h, ref_h)
    assert torch.equal(out, FP8_LINEAR(normed, w, s, b, quantize_input))


def test_per_tensor_scale_and_defaults():
    x, res, nw, w, s, _ = _operands(3, granularity="per_tensor")
    assert s.dim() == 0
    out, _ = OP(x, res, nw, EPS, False, w, s)  # bias None, quantize_input True by default
    assert torch.equal(out, FP8_LINEAR(NORM(x, res, nw, EPS, False)[0], w, s, None, True))


def test_opcheck_fake():
    # (test_schema: the CPU reference reads e4m3 operands the way opcheck's checks cannot; see test_fp8_gemv.py)
    x, res, nw, w, s, b = _operands(2, 3, bias=True)
    for quantize_input in (True, False):
        torch.library.opcheck(OP.default, (x, res, nw, EPS, False, w, s, b, quantize_input),
                              test_utils=("test_faketensor",))
