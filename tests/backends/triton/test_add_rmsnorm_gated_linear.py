"""Opt-in prologue variant: autodeploy::triton_add_rmsnorm_gated_linear (residual add + RMSNorm + gated
projection in one launch) vs the reference ops in turn (fused_add_rmsnorm, then gated_linear).
Interpreted on CPU: fp32 for every kind, bf16 for "fma" (see test_gated_linear.py)."""

from __future__ import annotations

import pytest
import torch

import autodeploy.ops  # noqa: F401
from autodeploy.backends.triton import gated_linear
from tests.backends.triton.cases import DEVICE, dtypes, randn
from tests.helpers.tolerances import assert_close

OP = torch.ops.autodeploy.triton_add_rmsnorm_gated_linear
EPS = 1e-5


def _reference(x, res, nw, offset, w, b, act):
    normed, h = torch.ops.autodeploy.fused_add_rmsnorm(x, res, nw, EPS, offset)
    return torch.ops.autodeploy.gated_linear(normed, w, b, act), h


def _operands(m, i, k, dtype=torch.float32, bias=False):
    x, res = randn(m, k, dtype=dtype), randn(m, k, dtype=dtype, scale=3.0)
    nw = (torch.rand(k) + 0.5).to(device=x.device, dtype=dtype)
    w = randn(2 * i, k, dtype=dtype, scale=2 * k**-0.5)
    return x, res, nw, w, randn(2 * i, dtype=dtype) if bias else None


def _config(kind, split=1):
    return dict(kind=kind, bn=16, bk=64, split=split, num_warps=4, num_stages=2)


@dtypes
@pytest.mark.parametrize("kind,split", [("fma", 1), ("dot", 1), ("dot_t", 1), ("dot_t", 3)])
@pytest.mark.parametrize("m", [1, 5, 16])
@pytest.mark.parametrize("offset", [False, True], ids=["llama", "gemma"])
def test_matches_norm_then_gated_linear(offset, m, kind, split, dtype):
    x, res, nw, w, b = _operands(m, 37, 192, dtype, bias=True)
    out, h = gated_linear.launch(x, w, b, "silu", _config(kind, split), norm=(res, nw, EPS, offset))
    ref_out, ref_h = _reference(x, res, nw, offset, w, b, "silu")
    assert out.shape == (m, 37) and h.shape == (m, 192) and out.dtype == h.dtype == dtype
    assert torch.equal(h, ref_h)  # the residual add rounds exactly as the unfused one
    assert_close(out, ref_out)


@pytest.mark.parametrize("m", [1, 16])
def test_bf16(m):
    x, res, nw, w, _ = _operands(m, 40, 128, torch.bfloat16)
    out, h = gated_linear.launch(x, w, None, "gelu_tanh", _config("fma"), norm=(res, nw, EPS, False))
    _, ref_h = _reference(x, res, nw, False, w, None, "gelu_tanh")
    if DEVICE == "cuda":
        assert torch.equal(h, ref_h)
    else:  # the interpreter casts fp32 -> bf16 by truncation, not round-to-nearest: one ulp apart
        assert_close(h, ref_h)
    # the bf16 reference rounds gate, up, act(gate) and the norm's output on the way (several ulps of
    # a gate ~5 apart from the kernel's fp32 epilogue); the same math in fp32 from the same inputs
    # (h as the kernel rounds it) is the reference that a single rounding should match
    ref_out, _ = _reference(h.float(), torch.zeros_like(h, dtype=torch.float32), nw.float(), False, w.float(), None,
                            "gelu_tanh")
    assert_close(out, ref_out.to(torch.bfloat16))


@pytest.mark.parametrize("shape", [(1, 1, 128), (2, 3, 128), (1, 20, 128)], ids=["decode", "6 rows", "prefill"])
def test_op_default_config_and_prefill_fallback(shape):
    x, res = randn(*shape), randn(*shape)
    _, _, nw, w, b = _operands(1, 24, 128, bias=True)
    out, h = OP(x, res, nw, EPS, False, w, b, "silu")
    ref_out, ref_h = _reference(x, res, nw, False, w, b, "silu")
    assert out.shape == (*shape[:-1], 24) and h.shape == shape
    assert_close(h, ref_h)
    assert_close(out, ref_out)


def test_unsupported_and_fake():
    x, res, nw, w, _ = _operands(2, 16, 128)
    with pytest.raises(NotImplementedError, match="residual"):
        gated_linear.launch(x, w, norm=(res[:1], nw, EPS, False))
    with pytest.raises(NotImplementedError, match="norm weight"):
        gated_linear.launch(x, w, norm=(res, nw[:64], EPS, False))
    torch.library.opcheck(OP.default, (x, res, nw, EPS, False, w, None, "silu"),
                          test_utils=("test_schema", "test_faketensor"))
