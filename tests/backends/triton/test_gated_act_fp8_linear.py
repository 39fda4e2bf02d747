"""autodeploy::triton_gated_act_fp8_linear (act(gate) * up + per-token e4m3 quantization in one kernel, then
fp8_gemv's GEMV on the codes) vs the pair it replaces on the GPU (the Triton activation kernel, then fp8_gemv's
quantization kernel: bit-identical codes and scales) and vs the reference autodeploy::gated_act_fp8_linear;
its fallbacks and the unfused candidates registered beside it. Interpreted on CPU, compiled on CUDA."""

from __future__ import annotations

import pytest
import torch

import autodeploy.ops  # noqa: F401
from autodeploy.backends.triton import fp8_gemv, gated_mlp
from autodeploy.backends.triton import gated_act_fp8_linear as fused
from autodeploy.profiler.candidates import backends_for
from autodeploy.quantization import fp8
from autodeploy.quantization.metrics import sqnr
from tests.backends.triton.cases import DEVICE, dtypes, randn
from tests.helpers.tolerances import assert_close

OP = torch.ops.autodeploy.triton_gated_act_fp8_linear
REF = torch.ops.autodeploy.gated_act_fp8_linear
FP8_LINEAR = torch.ops.autodeploy.fp8_linear
ACTS = ["silu", "gelu_tanh", "gelu"]


def _gate_up(*lead, f, dtype=torch.float32):
    """gate, up [.., F]: the two halves of one gate_up GEMM's output [.., 2F], as views (the graph's split)."""
    gate_up = randn(*lead, 2 * f, dtype=dtype, scale=3.0)
    gate_up[..., 5] *= 8.0  # an outlier channel sets each token's scale
    return gate_up.split([f, f], dim=-1)


def _operands(rows, n, f, dtype=torch.float32, bias=False, granularity="per_channel"):
    gate, up = _gate_up(rows, f=f, dtype=dtype)  # [M, F] each, row stride 2F
    p = fp8.quantize(torch.randn(n, f) / f**0.5, granularity)
    return gate, up, p["weight"].to(DEVICE), p["weight_scale"].to(DEVICE), randn(n, dtype=dtype) if bias else None


def _bits(q: torch.Tensor) -> torch.Tensor:
    return q.view(torch.uint8)  # e4m3 codes compared as bytes (torch.equal would compare the values)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("block", [None, 64], ids=["whole row", "blocks of 64: the row computed twice"])
@pytest.mark.parametrize("f", [128, 192], ids=["F=128", "F=192: a masked block"])
@pytest.mark.parametrize("m", [1, 3])
@pytest.mark.parametrize("act", ACTS)
def test_codes_and_scales_bit_identical_to_act_then_quantize(act, m, f, block, dtype):
    gate, up, *_ = _operands(m, 16, f, dtype)
    xq, xs = fused.gated_act_quantize(gate, up, act, block)
    h = gated_mlp.launch(gate, up, act)  # the activation kernel the fold replaces
    q_kernel, s_kernel = fp8_gemv.quantize_rows(h)  # then fp8_gemv's quantization kernel
    q_torch, s_torch = fp8.quantize_rows(h)  # = the reference quantizer on the same row
    assert xq.dtype == fp8.DTYPE and xs.dtype == torch.float32 and xq.shape == (m, f) and xs.shape == (m,)
    assert torch.equal(_bits(xq), _bits(q_kernel)) and torch.equal(xs, s_kernel)
    # = the reference quantizer's values (as values: silu of the outlier's large negative gates underflows to
    # a zero code, which the interpreter's exact rounding (EXACT) writes as +0 where torch keeps -0)
    assert torch.equal(xq.float(), q_torch.float()) and torch.equal(xs, s_torch[:, 0])


@dtypes
@pytest.mark.parametrize("m", [1, 3])
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("act", ACTS)
def test_kernels_match_reference(act, bias, m, dtype):
    # N = 40: the last 16-row tile of a 16 x 64 config is 8 rows; F = 192: 3 BK steps
    gate, up, w, s, b = _operands(m, 40, 192, dtype, bias)
    cfg = dict(bn=16, bk=64, split=1, num_warps=4, num_stages=2)
    out = fused.launch(gate, up, act, w, s, b, cfg)
    assert out.shape == (m, 40) and out.dtype == dtype
    h = gated_mlp.launch(gate, up, act)
    assert_close(out, FP8_LINEAR(h, w, s, b))  # the same codes: fp32 summation order apart
    assert_close(out, REF(gate, up, act, w, s, b))


@pytest.mark.parametrize("split", [2, 3])
def test_split_k_and_per_tensor_scale(split):
    gate, up, w, s, b = _operands(2, 20, 320, bias=True, granularity="per_tensor")
    cfg = dict(bn=16, bk=64, split=split, num_warps=4, num_stages=2)
    assert fp8_gemv.normalized(cfg, 2, 20, 320)["split"] == split
    assert_close(fused.launch(gate, up, "silu", w, s, b, cfg), REF(gate, up, "silu", w, s, b))


def test_bf16_activations():
    gate, up, w, s, b = _operands(3, 48, 128, torch.bfloat16, bias=True)
    out = OP(gate, up, "silu", w, s, b)
    assert out.dtype == torch.bfloat16
    h = gated_mlp.launch(gate, up, "silu")
    assert_close(out, FP8_LINEAR(h, w, s, b))  # the same e4m3 codes: one bf16 rounding of the output apart
    # against the reference, which rounds silu(gate) to bf16 before the product (and the interpreter casts by
    # truncation): a few codes one e4m3 step apart, far less than one quantization's ~31 dB
    assert sqnr(out, REF(gate, up, "silu", w, s, b)) >= 33.0


@pytest.mark.parametrize("lead", [(1, 1), (3, 1), (2, 8), (1, 17), (1, 40)],
                         ids=["1 row", "3 rows", "16 rows", "17 rows: unfused", "prefill: unfused"])
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
def test_op_default_config_and_prefill_fallback(lead, bias, monkeypatch):
    fused_calls = []
    real = fused.gated_act_quantize
    monkeypatch.setattr(fused, "gated_act_quantize", lambda *a: fused_calls.append(a[0].shape) or real(*a))
    gate, up = _gate_up(*lead, f=128)  # [b, s, F] views of [b, s, 2F]
    _, _, w, s, b = _operands(1, 24, 128, bias=bias)
    out = OP(gate, up, "silu", w, s, b)
    assert out.shape == (*lead, 24)
    assert bool(fused_calls) == (lead[0] * lead[1] <= 16)
    assert_close(out, REF(gate, up, "silu", w, s, b))


def test_unsupported_calls_take_the_unfused_path():
    gate, up, w, s, b = _operands(2, 24, 96, bias=True)  # F = 96: no multiple of 64, at any row count
    assert not fused.supports(gate, up, "silu", w, s, b)
    with pytest.raises(NotImplementedError, match="K = 96"):
        fused.launch(gate, up, "silu", w, s, b)
    gate, up, w, s, b = _operands(2, 24, 128, bias=True)
    blocks = torch.full((1, 2), float(s.max()), device=DEVICE)  # block-wise scales [N/128, F/64]
    cases = [(s, True), (s, False), (blocks, True)]  # as is; weight-only FP8; block scales: the reference GEMM
    assert [fused.supports(gate, up, "silu", w, sc, b, q) for sc, q in cases] == [True, False, False]
    assert not fused.supports(gate, up[:1], "silu", w, s, b)  # up must have gate's shape
    assert not fused.supports(gate, up, "relu", w, s, b)
    for scale, quantize_input in cases:
        args = (gate, up, "gelu", w, scale, b, quantize_input)
        assert_close(OP(*args), REF(*args))


@pytest.mark.parametrize("op", [fused.ACT_FP8_GEMV, fused.ACT_SCALED_MM], ids=["act+gemv", "act+scaled_mm"])
@pytest.mark.parametrize("m", [1, 20])
def test_unfused_candidates_match_reference(op, m):
    gate, up, w, s, b = _operands(m, 37, 128, bias=True)
    assert_close(op(gate, up, "silu", w, s, b, True), REF(gate, up, "silu", w, s, b, True))


def test_fakes():
    # (opcheck's test_schema cannot run on e4m3 inputs: it multiplies them on the CPU)
    gate, up, w, s, b = _operands(2, 32, 128, bias=True)
    for op in (OP.default, fused.ACT_FP8_GEMV, fused.ACT_SCALED_MM):
        torch.library.opcheck(op, (gate, up, "silu", w, s, b, True), test_utils=("test_faketensor",))


def test_backend_candidates_on_cuda():
    # the fused twin first (the --no-autotune choice), then the unfused pairs the autotuner times it against
    names = [(b.name, b.op) for b in backends_for(REF.default, torch.device("cuda"))]
    assert names[0] == ("triton", OP.default)
    assert [n for n, _ in names[1:]] == ["act+gemv", "act+scaled_mm", "torch"]
    assert [b.name for b in backends_for(REF.default, torch.device("cpu"))] == ["torch"]
    gate, up, w, s, _ = _operands(1, 16, 64)
    args = dict(gate=gate, up=up, act="silu", weight=w, weight_scale=s, bias=None, quantize_input=True)
    backends = backends_for(REF.default, torch.device("cuda"))
    assert backends[0].can_run(args) and not backends[0].can_run(dict(args, quantize_input=False))
