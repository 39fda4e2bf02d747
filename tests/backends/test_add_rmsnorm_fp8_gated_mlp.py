"""autodeploy::add_rmsnorm_fp8_gated_mlp reference vs the ops it replaces: autodeploy::add_rmsnorm_fp8_linear, the
split of its output, autodeploy::gated_act_fp8_linear (bit-exact), and its fake implementation."""

from __future__ import annotations

import pytest
import torch

import autodeploy.ops  # noqa: F401
from autodeploy.quantization import fp8

OP = torch.ops.autodeploy.add_rmsnorm_fp8_gated_mlp
NORM_FP8 = torch.ops.autodeploy.add_rmsnorm_fp8_linear
ACT_FP8 = torch.ops.autodeploy.gated_act_fp8_linear
EPS = 1e-6


def _operands(*lead, k=64, f=96, n=24, dtype=torch.float32, bias=False, granularity="per_channel"):
    g = torch.Generator().manual_seed(0)
    x, res = (torch.randn(*lead, k, generator=g).to(dtype) for _ in range(2))  # [.., K] each
    nw = (torch.rand(k, generator=g) + 0.5).to(dtype)
    gu = fp8.quantize(torch.randn(2 * f, k, generator=g) / k**0.5, granularity)
    dn = fp8.quantize(torch.randn(n, f, generator=g) / f**0.5, granularity)
    b = (lambda m: torch.randn(m, generator=g).to(dtype)) if bias else (lambda m: None)
    return x, res, nw, gu["weight"], gu["weight_scale"], b(2 * f), dn["weight"], dn["weight_scale"], b(n)


def _unfused(x, res, nw, offset, w, s, b, q1, act, wd, sd, bd, q2):
    gate_up, new_res = NORM_FP8(x, res, nw, EPS, offset, w, s, b, q1)
    f = w.shape[0] // 2
    gate, up = gate_up.split([f, f], -1)
    return ACT_FP8(gate, up, act, wd, sd, bd, q2), new_res


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("act", ["silu", "gelu_tanh"])
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("quantize", [(True, True), (False, False), (True, False)], ids=["dynamic", "weight_only", "mixed"])
@pytest.mark.parametrize("offset", [False, True], ids=["llama", "gemma"])
def test_bit_identical_to_the_ops_it_replaces(offset, quantize, bias, act, dtype):
    x, res, nw, w, s, b, wd, sd, bd = _operands(2, 5, dtype=dtype, bias=bias)
    out, new_res = OP(x, res, nw, EPS, offset, w, s, b, quantize[0], act, wd, sd, bd, quantize[1])
    assert out.shape == (2, 5, 24) and new_res.shape == (2, 5, 64) and out.dtype == new_res.dtype == dtype
    want_out, want_res = _unfused(x, res, nw, offset, w, s, b, quantize[0], act, wd, sd, bd, quantize[1])
    assert torch.equal(out, want_out) and torch.equal(new_res, want_res)


def test_per_tensor_scales_and_defaults():
    x, res, nw, w, s, b, wd, sd, _ = _operands(3, granularity="per_tensor")
    assert s.dim() == 0
    out, new_res = OP(x, res, nw, EPS, False, w, s, None, True, "silu", wd, sd)  # bias_down None, quantize_down True
    want = _unfused(x, res, nw, False, w, s, None, True, "silu", wd, sd, None, True)
    assert torch.equal(out, want[0]) and torch.equal(new_res, want[1])


def test_opcheck_fake():
    # (test_schema: the CPU reference reads e4m3 operands the way opcheck's checks cannot; see test_fp8_gemv.py)
    x, res, nw, w, s, b, wd, sd, bd = _operands(2, 3, bias=True)
    for q in (True, False):
        torch.library.opcheck(OP.default, (x, res, nw, EPS, False, w, s, b, q, "silu", wd, sd, bd, q),
                              test_utils=("test_faketensor",))
