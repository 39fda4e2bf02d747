"""autodeploy::triton_add_rmsnorm_fp8_linear (add + RMSNorm + per-token e4m3 quantization in one kernel, then
fp8_gemv's GEMV on the codes) vs the pair it replaces on the GPU (the Triton norm kernel, then fp8_gemv's
quantization kernel: bit-identical codes and scales) and vs the reference autodeploy::add_rmsnorm_fp8_linear;
its fallbacks and the unfused candidates registered beside it. Interpreted on CPU, compiled on CUDA."""

from __future__ import annotations

import pytest
import torch

import autodeploy.ops  # noqa: F401
from autodeploy.backends.triton import add_rmsnorm_fp8_linear as fused
from autodeploy.backends.triton import fp8_gemv, rmsnorm
from autodeploy.profiler.candidates import backends_for
from autodeploy.quantization import fp8
from autodeploy.quantization.metrics import sqnr
from tests.backends.triton.cases import DEVICE, dtypes, randn
from tests.helpers.tolerances import assert_close, assert_fp8_close

OP = torch.ops.autodeploy.triton_add_rmsnorm_fp8_linear
REF = torch.ops.autodeploy.add_rmsnorm_fp8_linear
FP8_LINEAR = torch.ops.autodeploy.fp8_linear
EPS = 1e-5


def _operands(rows, n, k, dtype=torch.float32, bias=False, granularity="per_channel"):
    x, res = randn(rows, k, dtype=dtype), randn(rows, k, dtype=dtype, scale=3.0)  # [M, K] each
    x[:, 5] *= 20.0  # an outlier channel sets each token's scale
    nw = (torch.rand(k) + 0.5).to(device=x.device, dtype=dtype)  # [K]
    p = fp8.quantize(torch.randn(n, k) / k**0.5, granularity)
    return x, res, nw, p["weight"].to(DEVICE), p["weight_scale"].to(DEVICE), randn(n, dtype=dtype) if bias else None


def _bits(q: torch.Tensor) -> torch.Tensor:
    return q.view(torch.uint8)  # e4m3 codes compared as bytes (torch.equal would compare the values)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("k", [128, 192], ids=["K=128", "K=192: a masked block"])
@pytest.mark.parametrize("m", [1, 3])
@pytest.mark.parametrize("offset", [False, True], ids=["llama", "gemma"])
def test_codes_and_scales_bit_identical_to_norm_then_quantize(offset, m, k, dtype):
    x, res, nw, *_ = _operands(m, 16, k, dtype)
    xq, xs, h = fused.add_rmsnorm_quantize(x, res, nw, EPS, offset)
    normed, ref_h = rmsnorm.launch(x, nw, EPS, offset, residual=res)  # the norm kernel the fold replaces
    q_kernel, s_kernel = fp8_gemv.quantize_rows(normed)  # then fp8_gemv's quantization kernel
    q_torch, s_torch = fp8.quantize_rows(normed)  # = the reference quantizer on the same row
    assert xq.dtype == fp8.DTYPE and xs.dtype == torch.float32 and xq.shape == (m, k) and xs.shape == (m,)
    assert torch.equal(h, ref_h)
    assert torch.equal(_bits(xq), _bits(q_kernel)) and torch.equal(xs, s_kernel)
    assert torch.equal(_bits(xq), _bits(q_torch)) and torch.equal(xs, s_torch[:, 0])


@dtypes
@pytest.mark.parametrize("m", [1, 3])
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("offset", [False, True], ids=["llama", "gemma"])
def test_kernels_match_reference(offset, bias, m, dtype):
    # N = 40: the last 16-row tile of a 16 x 64 config is 8 rows; K = 192: 3 BK steps
    x, res, nw, w, s, b = _operands(m, 40, 192, dtype, bias)
    cfg = dict(bn=16, bk=64, split=1, num_warps=4, num_stages=2)
    out, h = fused.launch(x, res, nw, EPS, offset, w, s, b, cfg)
    ref_out, ref_h = REF(x, res, nw, EPS, offset, w, s, b)
    assert out.shape == (m, 40) and h.shape == (m, 192) and out.dtype == h.dtype == dtype
    assert torch.equal(h, ref_h)  # the residual add rounds exactly as the unfused one
    normed, _ = rmsnorm.launch(x, nw, EPS, offset, residual=res)
    assert_fp8_close(out, FP8_LINEAR(normed, w, s, b))  # the same codes: fp32 summation order apart
    assert_fp8_close(out, ref_out)  # bf16 / fp16: the reference rounds a Llama row twice, a few codes a step off


@pytest.mark.parametrize("split", [2, 3])
def test_split_k_and_per_tensor_scale(split):
    x, res, nw, w, s, b = _operands(2, 20, 320, bias=True, granularity="per_tensor")
    cfg = dict(bn=16, bk=64, split=split, num_warps=4, num_stages=2)
    assert fp8_gemv.normalized(cfg, 2, 20, 320)["split"] == split
    out, h = fused.launch(x, res, nw, EPS, False, w, s, b, cfg)
    ref_out, ref_h = REF(x, res, nw, EPS, False, w, s, b)
    assert_fp8_close(out, ref_out)
    assert torch.equal(h, ref_h)


def test_bf16_activations():
    x, res, nw, w, s, b = _operands(3, 48, 128, torch.bfloat16, bias=True)
    out, h = OP(x, res, nw, EPS, False, w, s, b)
    ref_out, ref_h = REF(x, res, nw, EPS, False, w, s, b)
    assert out.dtype == h.dtype == torch.bfloat16
    if DEVICE == "cuda":
        assert torch.equal(h, ref_h)
    else:  # the interpreter casts fp32 -> bf16 by truncation, not round-to-nearest: one ulp apart
        assert_close(h, ref_h)
    normed, _ = rmsnorm.launch(x, nw, EPS, False, residual=res)
    assert_fp8_close(out, FP8_LINEAR(normed, w, s, b))  # the same e4m3 codes: one bf16 rounding of the output apart
    # against the reference, whose normed row may differ by one bf16 ulp (the norm kernel's, and here the
    # interpreter's truncation): a few codes one e4m3 step apart, far less than one quantization's ~31 dB
    assert sqnr(out, ref_out) >= 33.0


@pytest.mark.parametrize("shape", [(1, 1, 128), (3, 1, 128), (2, 8, 128), (1, 17, 128), (1, 40, 128)],
                         ids=["1 row", "3 rows", "16 rows", "17 rows: unfused", "prefill: unfused"])
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
def test_op_default_config_and_prefill_fallback(shape, bias, monkeypatch):
    fused_calls = []
    real = fused.add_rmsnorm_quantize
    monkeypatch.setattr(fused, "add_rmsnorm_quantize", lambda *a: fused_calls.append(a[0].shape) or real(*a))
    x, res = randn(*shape), randn(*shape)
    _, _, nw, w, s, b = _operands(1, 24, 128, bias=bias)
    out, h = OP(x, res, nw, EPS, False, w, s, b)
    ref_out, ref_h = REF(x, res, nw, EPS, False, w, s, b)
    assert out.shape == (*shape[:-1], 24) and h.shape == shape
    assert bool(fused_calls) == (shape[0] * shape[1] <= 16)
    assert_close(h, ref_h)
    assert_fp8_close(out, ref_out)


def test_unsupported_calls_take_the_unfused_path():
    x, res, nw, w, s, b = _operands(2, 24, 96, bias=True)  # K = 96: no multiple of 64, at any row count
    assert not fused.supports(x, res, nw, w, s, b)
    with pytest.raises(NotImplementedError, match="K = 96"):
        fused.launch(x, res, nw, EPS, False, w, s, b)
    x, res, nw, w, s, b = _operands(2, 24, 128, bias=True)
    blocks = torch.full((1, 2), float(s.max()), device=DEVICE)  # block-wise scales [N/128, K/64]
    cases = [(s, True), (s, False), (blocks, True)]  # as is; weight-only FP8; block scales: the reference GEMM
    assert [fused.supports(x, res, nw, w, sc, b, q) for sc, q in cases] == [True, False, False]
    assert not fused.supports(x, res[:1], nw, w, s, b)  # the residual must have x's shape
    for scale, quantize_input in cases:
        out, h = OP(x, res, nw, EPS, True, w, scale, b, quantize_input)
        ref_out, ref_h = REF(x, res, nw, EPS, True, w, scale, b, quantize_input)
        (assert_fp8_close if quantize_input else assert_close)(out, ref_out)  # weight-only: x as is, no codes
        assert_close(h, ref_h)


@pytest.mark.parametrize("op", [fused.NORM_FP8_GEMV, fused.NORM_SCALED_MM], ids=["norm+gemv", "norm+scaled_mm"])
@pytest.mark.parametrize("m", [1, 20])
def test_unfused_candidates_match_reference(op, m):
    x, res, nw, w, s, b = _operands(m, 37, 128, bias=True)
    out, h = op(x, res, nw, EPS, True, w, s, b, True)
    ref_out, ref_h = REF(x, res, nw, EPS, True, w, s, b, True)
    assert_fp8_close(out, ref_out)
    assert_close(h, ref_h)


def test_fakes():
    # (opcheck's test_schema cannot run on e4m3 inputs: it multiplies them on the CPU)
    x, res, nw, w, s, b = _operands(2, 32, 128, bias=True)
    for op in (OP.default, fused.NORM_FP8_GEMV, fused.NORM_SCALED_MM):
        torch.library.opcheck(op, (x, res, nw, EPS, False, w, s, b, True), test_utils=("test_faketensor",))


def test_backend_candidates_on_cuda():
    # the fused twin first (the --no-autotune choice), then the unfused pairs the autotuner times it against
    names = [(b.name, b.op) for b in backends_for(REF.default, torch.device("cuda"))]
    assert names[0] == ("triton", OP.default)
    assert [n for n, _ in names[1:]] == ["norm+gemv", "norm+scaled_mm", "torch"]
    assert [b.name for b in backends_for(REF.default, torch.device("cpu"))] == ["torch"]
    x, res, nw, w, s, _ = _operands(1, 16, 64)
    args = dict(x=x, residual=res, norm_weight=nw, eps=EPS, add_unit_offset=False, weight=w, weight_scale=s,
                bias=None, quantize_input=True)
    backends = backends_for(REF.default, torch.device("cuda"))
    assert backends[0].can_run(args) and not backends[0].can_run(dict(args, quantize_input=False))
