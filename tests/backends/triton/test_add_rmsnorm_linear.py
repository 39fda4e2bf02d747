"""autodeploy::triton_add_rmsnorm_linear (residual add + RMSNorm as the decode GEMV's prologue) vs the
reference autodeploy::add_rmsnorm_linear (= fused_add_rmsnorm, then aten.linear), and the unfused
candidates registered beside it. Interpreted on CPU in fp32 (every kind, split K), bf16 for "fma"
(see test_gated_linear.py); compiled on CUDA."""

from __future__ import annotations

import pytest
import torch

import autodeploy.ops  # noqa: F401
from autodeploy.backends.triton import add_rmsnorm_linear as fused
from autodeploy.backends.triton import linear
from autodeploy.profiler.candidates import backends_for
from tests.backends.triton.cases import DEVICE, dtypes, randn
from tests.helpers.tolerances import assert_close

OP = torch.ops.autodeploy.triton_add_rmsnorm_linear
REF = torch.ops.autodeploy.add_rmsnorm_linear
GATED_OP = torch.ops.autodeploy.triton_add_rmsnorm_gated_linear
GATED_REF = torch.ops.autodeploy.add_rmsnorm_gated_linear
EPS = 1e-5


def _operands(rows, n, k, dtype=torch.float32, bias=False):
    x, res = randn(rows, k, dtype=dtype), randn(rows, k, dtype=dtype, scale=3.0)  # [M, K] each
    nw = (torch.rand(k) + 0.5).to(device=x.device, dtype=dtype)  # [K]
    w = randn(n, k, dtype=dtype, scale=2 * k**-0.5)  # [N, K]
    return x, res, nw, w, randn(n, dtype=dtype) if bias else None


def _config(kind, split=1):
    return dict(kind=kind, bn=16, bk=64, split=split, num_warps=4, num_stages=2)


@dtypes
@pytest.mark.parametrize("kind,split", [("fma", 1), ("dot", 1), ("dot_t", 1), ("dot_t", 3)])
@pytest.mark.parametrize("m", [1, 3, 16])
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("offset", [False, True], ids=["llama", "gemma"])
def test_kernel_matches_norm_then_linear(offset, bias, m, kind, split, dtype):
    # N = 37: the last 16-column tile has 5 columns; K = 192: 3 BK steps (one per split at split 3)
    x, res, nw, w, b = _operands(m, 37, 192, dtype, bias)
    out, h = linear.launch(x, w, b, _config(kind, split), norm=(res, nw, EPS, offset))
    ref_out, ref_h = REF(x, res, nw, EPS, offset, w, b)
    assert out.shape == (m, 37) and h.shape == (m, 192) and out.dtype == h.dtype == dtype
    assert torch.equal(h, ref_h)  # the residual add rounds exactly as the unfused one
    assert_close(out, ref_out)


@pytest.mark.parametrize("offset", [False, True], ids=["llama", "gemma"])
@pytest.mark.parametrize("m", [1, 16])
def test_bf16(m, offset):
    x, res, nw, w, b = _operands(m, 40, 128, torch.bfloat16, bias=True)
    out, h = linear.launch(x, w, b, _config("fma"), norm=(res, nw, EPS, offset))
    _, ref_h = REF(x, res, nw, EPS, offset, w, b)
    if DEVICE == "cuda":
        assert torch.equal(h, ref_h)
    else:  # the interpreter casts fp32 -> bf16 by truncation, not round-to-nearest: one ulp apart
        assert_close(h, ref_h)
    # the bf16 reference rounds the norm's output and its weight product on the way; the same math in
    # fp32 from the same inputs (h as the kernel rounds it, the normed tile cast once to bf16 as the
    # kernel casts it before its dot) is what a single rounding of the output should match
    hf = h.float()
    normed = hf * torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + EPS) * ((1.0 + nw.float()) if offset else nw.float())
    ref_out = torch.nn.functional.linear(_as_kernel_casts_bf16(normed), w.float(), b.float())
    assert_close(out, ref_out.to(torch.bfloat16))


def _as_kernel_casts_bf16(t: torch.Tensor) -> torch.Tensor:
    """fp32 -> bf16 -> fp32 as the kernel casts: round to nearest compiled; truncated by the interpreter
    (its fp32 -> bf16 keeps the high 16 bits, which biases a K-long dot of same-sign products)."""
    if DEVICE == "cuda":
        return t.to(torch.bfloat16).float()
    return (t.contiguous().view(torch.int32) & -65536).view(torch.float32)


@pytest.mark.parametrize("shape", [(1, 1, 128), (3, 1, 128), (2, 8, 128), (1, 17, 128), (1, 40, 128)],
                         ids=["1 row", "3 rows", "16 rows", "17 rows: unfused", "prefill: unfused"])
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
def test_op_default_config_and_prefill_fallback(shape, bias):
    x, res = randn(*shape), randn(*shape)
    _, _, nw, w, b = _operands(1, 24, 128, bias=bias)
    out, h = OP(x, res, nw, EPS, False, w, b)
    ref_out, ref_h = REF(x, res, nw, EPS, False, w, b)
    assert out.shape == (*shape[:-1], 24) and h.shape == shape
    assert_close(h, ref_h)
    assert_close(out, ref_out)


def test_unsupported_calls_take_the_unfused_path():
    # K = 96 is no multiple of 64: the GEMV cannot read it at any row count; the op still answers
    x, res, nw, w, b = _operands(2, 24, 96, bias=True)
    assert not fused.supports(x, res, nw, w, b)
    with pytest.raises(NotImplementedError, match="K = 96"):
        linear.launch(x, w, b, norm=(res, nw, EPS, False))
    for op, ref, extra in ((OP, REF, ()), (GATED_OP, GATED_REF, ("silu",))):
        out, h = op(x, res, nw, EPS, True, w, b, *extra)
        ref_out, ref_h = ref(x, res, nw, EPS, True, w, b, *extra)
        assert_close(out, ref_out)
        assert_close(h, ref_h)


def test_norm_operand_checks():
    x, res, nw, w, _ = _operands(2, 16, 128)
    with pytest.raises(NotImplementedError, match="residual"):
        linear.launch(x, w, norm=(res[:1], nw, EPS, False))
    with pytest.raises(NotImplementedError, match="norm weight"):
        linear.launch(x, w, norm=(res, nw[:64], EPS, False))
    assert fused.supports(x, res, nw, w) and not fused.supports(x, res[:1], nw, w)
    assert fused.supports_gated(x, res, nw, w, None, "silu") and not fused.supports_gated(x, res, nw, w, None, "relu")


def test_gated_twin_matches_reference():
    x, res, nw, w, b = _operands(3, 2 * 24, 128, bias=True)
    for rows in (x, x.repeat(6, 1)):  # 3 rows: the GEMV; 18: the unfused path
        r = res if rows is x else res.repeat(6, 1)
        out, h = GATED_OP(rows, r, nw, EPS, False, w, b, "silu")
        ref_out, ref_h = GATED_REF(rows, r, nw, EPS, False, w, b, "silu")
        assert out.shape == (rows.shape[0], 24)
        assert_close(out, ref_out)
        assert_close(h, ref_h)


@pytest.mark.parametrize("op", [fused.NORM_CUBLAS_LINEAR, fused.NORM_GEMV_LINEAR], ids=["norm+cublas", "norm+gemv"])
@pytest.mark.parametrize("m", [1, 20])
def test_unfused_linear_candidates_match_reference(op, m):
    x, res, nw, w, b = _operands(m, 37, 128, bias=True)
    out, h = op(x, res, nw, EPS, True, w, b)
    ref_out, ref_h = REF(x, res, nw, EPS, True, w, b)
    assert_close(out, ref_out)
    assert_close(h, ref_h)


@pytest.mark.parametrize("op", [fused.NORM_CUBLAS_GATED, fused.NORM_GEMV_GATED], ids=["norm+cublas", "norm+gemv"])
def test_unfused_gated_candidates_match_reference(op):
    x, res, nw, w, b = _operands(2, 48, 128, bias=True)
    out, h = op(x, res, nw, EPS, False, w, b, "gelu_tanh")
    ref_out, ref_h = GATED_REF(x, res, nw, EPS, False, w, b, "gelu_tanh")
    assert_close(out, ref_out)
    assert_close(h, ref_h)


def test_schemas_and_fakes():
    x, res, nw, w, b = _operands(2, 32, 128, bias=True)
    utils = ("test_schema", "test_faketensor")
    for op in (OP.default, REF.default, fused.NORM_CUBLAS_LINEAR, fused.NORM_GEMV_LINEAR):
        torch.library.opcheck(op, (x, res, nw, EPS, False, w, b), test_utils=utils)
    for op in (GATED_OP.default, GATED_REF.default, fused.NORM_CUBLAS_GATED, fused.NORM_GEMV_GATED):
        torch.library.opcheck(op, (x, res, nw, EPS, False, w, b, "silu"), test_utils=utils)


def test_backend_candidates_on_cuda():
    # the fused twin first (the --no-autotune choice), then the unfused pairs the autotuner times it against
    for canonical, twin in ((REF.default, OP.default), (GATED_REF.default, GATED_OP.default)):
        names = [(b.name, b.op) for b in backends_for(canonical, torch.device("cuda"))]
        assert names[0] == ("triton", twin)
        assert [n for n, _ in names[1:]] == ["norm+cublas", "norm+gemv", "torch"]
        assert [b.name for b in backends_for(canonical, torch.device("cpu"))] == ["torch"]
