"""autodeploy::triton_gated_act_fp8_linear (act(gate) * up with per-block amaxes, then fp8_gemv's GEMV quantizing
x as it reads it, X_MODE 3) vs the pair it replaces on the GPU (the Triton activation kernel, then fp8_gemv's
quantization kernel and GEMV: bit-identical activation, codes and output) and vs the reference
autodeploy::gated_act_fp8_linear; its fallbacks and the unfused candidates registered beside it. Interpreted
on CPU, compiled on CUDA."""

from __future__ import annotations

import pytest
import torch

import autodeploy.ops  # noqa: F401
from autodeploy.backends.triton import fp8_gemv, gated_mlp
from autodeploy.backends.triton import gated_act_fp8_linear as fused
from autodeploy.backends.triton._common import tickets
from autodeploy.profiler.candidates import backends_for
from autodeploy.quantization import fp8
from autodeploy.quantization.metrics import sqnr
from tests.backends.triton.cases import DEVICE, dtypes, randn
from tests.helpers.tolerances import assert_close, assert_fp8_close

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


def _blockwise_amax(h: torch.Tensor, block: int) -> torch.Tensor:
    """h [M, F] -> fp32 [M, cdiv(F, block)]: max |h| over each block of `block` columns (the last partial)."""
    return torch.stack([c.float().abs().amax(dim=1) for c in h.split(block, dim=1)], dim=1)


def _late_outlier(gate: torch.Tensor, up: torch.Tensor) -> None:
    """Row 0's amax in its last (partial) block (in place): not the first block's, so a scale taken from
    block 0 alone would show. act(200) * 10 = 2000, above channel 5's outliers (gate ~ N(0, 24^2), up ~ N(0, 9))."""
    gate[0, -3], up[0, -3] = 200.0, 10.0


def _no_tickets_left() -> bool:
    return not tickets(torch.device(DEVICE), 1024)[:1024].any()


BF16_FP32 = pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])


@BF16_FP32
@pytest.mark.parametrize("f, block", [(192, None), (192, 128), (1088, None)],
                         ids=["F=192: one partial block", "F=192 in 128s: the last half", "F=1088: 1024 + 64"])
@pytest.mark.parametrize("m", [1, 3])
@pytest.mark.parametrize("act", ACTS)
def test_activation_bit_identical_and_block_amaxes(act, m, f, block, dtype):
    gate, up, *_ = _operands(m, 16, f, dtype)
    _late_outlier(gate, up)
    h, block_amax = fused.gated_act_block_amax(gate, up, act, block)
    nb = -(-f // (block or 1024))
    assert h.shape == (m, f) and h.dtype == dtype and block_amax.shape == (m, nb) and block_amax.dtype == torch.float32
    assert torch.equal(h, gated_mlp.launch(gate, up, act))  # the activation kernel the fold replaces, bit for bit
    assert torch.equal(block_amax, _blockwise_amax(h, block or 1024))


@BF16_FP32
@pytest.mark.parametrize("split", [1, 3])
@pytest.mark.parametrize("m", [1, 3])
def test_gemv_codes_bit_identical_to_quantize_rows(m, split, dtype):
    # an identity weight (scale 1) makes the fp32 output the codes times s_x, one product each: so the codes
    # the GEMV makes of the activation are compared with the prologue kernel's (and the reference's) directly
    f = 192
    gate, up, *_ = _operands(m, 16, f, dtype)
    _late_outlier(gate, up)
    h, block_amax = fused.gated_act_block_amax(gate, up, "silu", 128)  # two blocks, the last half full
    eye = torch.eye(f, device=DEVICE).to(fp8.DTYPE)
    ones = torch.ones(f, device=DEVICE)
    cfg = dict(bn=64, bk=64, split=split, num_warps=4, num_stages=2)
    out = fp8_gemv.launch_block_scaled(h, block_amax, eye, ones, None, torch.float32, cfg)
    q_kernel, s_kernel = fp8_gemv.quantize_rows(h)  # the unfused pair: the quantization kernel on the same row
    assert torch.equal(out, q_kernel.float() * s_kernel[:, None])
    q_torch, s_torch = fp8.quantize_rows(h)  # = the reference quantizer's (as values: the interpreter's exact
    assert torch.equal(out, q_torch.float() * s_torch)  # rounding writes +0 where torch keeps -0)
    assert _no_tickets_left()


@BF16_FP32
@pytest.mark.parametrize("split", [1, 3], ids=["unsplit", "split 3: merged by tickets"])
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("f", [192, 1088])
@pytest.mark.parametrize("m", [1, 3])
def test_output_bit_identical_to_act_then_quantize_then_gemv(m, f, bias, split, dtype):
    gate, up, w, s, b = _operands(m, 40, f, dtype, bias)
    _late_outlier(gate, up)
    cfg = dict(bn=16, bk=64, split=split, num_warps=4, num_stages=2)
    assert fp8_gemv.normalized(cfg, m, 40, f)["split"] == split
    h = gated_mlp.launch(gate, up, "gelu_tanh")  # the unfused pair: activation kernel, quantization kernel, GEMV
    want = fp8_gemv.launch_quantized(*fp8_gemv.quantize_rows(h), w, s, b, dtype, cfg)  # X_MODE 2
    for _ in range(2):  # the n tiles' last splits merge in the launch and leave the tickets at zero
        out = fused.launch(gate, up, "gelu_tanh", w, s, b, cfg)
        assert out.dtype == dtype and torch.equal(out, want)
        assert _no_tickets_left()


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
    assert_fp8_close(out, FP8_LINEAR(h, w, s, b))  # the same codes: fp32 summation order apart
    assert_fp8_close(out, REF(gate, up, act, w, s, b))  # bf16 / fp16: the reference rounds act(gate) first


@pytest.mark.parametrize("split", [2, 3])
def test_split_k_and_per_tensor_scale(split):
    gate, up, w, s, b = _operands(2, 20, 320, bias=True, granularity="per_tensor")
    cfg = dict(bn=16, bk=64, split=split, num_warps=4, num_stages=2)
    assert fp8_gemv.normalized(cfg, 2, 20, 320)["split"] == split
    assert_fp8_close(fused.launch(gate, up, "silu", w, s, b, cfg), REF(gate, up, "silu", w, s, b))


def test_bf16_activations():
    gate, up, w, s, b = _operands(3, 48, 128, torch.bfloat16, bias=True)
    out = OP(gate, up, "silu", w, s, b)
    assert out.dtype == torch.bfloat16
    h = gated_mlp.launch(gate, up, "silu")
    assert_fp8_close(out, FP8_LINEAR(h, w, s, b))  # the same e4m3 codes: one bf16 rounding of the output apart
    # against the reference, which rounds silu(gate) to bf16 before the product (and the interpreter casts by
    # truncation): a few codes one e4m3 step apart, far less than one quantization's ~31 dB
    assert sqnr(out, REF(gate, up, "silu", w, s, b)) >= 33.0


@pytest.mark.parametrize("lead", [(1, 1), (3, 1), (2, 8), (1, 17), (1, 40)],
                         ids=["1 row", "3 rows", "16 rows", "17 rows: unfused", "prefill: unfused"])
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
def test_op_default_config_and_prefill_fallback(lead, bias, monkeypatch):
    fused_calls = []
    real = fused.gated_act_block_amax
    monkeypatch.setattr(fused, "gated_act_block_amax", lambda *a: fused_calls.append(a[0].shape) or real(*a))
    gate, up = _gate_up(*lead, f=128)  # [b, s, F] views of [b, s, 2F]
    _, _, w, s, b = _operands(1, 24, 128, bias=bias)
    out = OP(gate, up, "silu", w, s, b)
    assert out.shape == (*lead, 24)
    assert bool(fused_calls) == (lead[0] * lead[1] <= 16)
    assert_fp8_close(out, REF(gate, up, "silu", w, s, b))


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
        (assert_fp8_close if quantize_input else assert_close)(OP(*args), REF(*args))  # weight-only: no codes


@pytest.mark.parametrize("op", [fused.ACT_FP8_GEMV, fused.ACT_SCALED_MM], ids=["act+gemv", "act+scaled_mm"])
@pytest.mark.parametrize("m", [1, 20])
def test_unfused_candidates_match_reference(op, m):
    gate, up, w, s, b = _operands(m, 37, 128, bias=True)
    assert_fp8_close(op(gate, up, "silu", w, s, b, True), REF(gate, up, "silu", w, s, b, True))


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
