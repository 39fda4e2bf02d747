"""tests/helpers/tolerances.py's FP8-path criterion on an FP8 GEMV's numbers (CPU): it takes x codes one e4m3
step off, as two compiled paths may round a tie, and rejects the bugs a kernel makes."""

from __future__ import annotations

import pytest
import torch

from autodeploy.quantization import fp8
from tests.helpers.tolerances import assert_fp8_close, assert_fp8_sqnr


def _gemv(codes: torch.Tensor, xs: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return (codes.float() * xs) @ w.T  # [M, N] fp32: e4m3 codes times their row scales, then the linear


@pytest.fixture
def case():
    """One decode row as tests/backends/triton/test_fp8_gemv.py makes it: [1, 192] x with an outlier channel,
    an e4m3 [40, 192] weight; its codes, scale, dequantized weight and the reference output."""
    p = fp8.quantize(torch.randn(40, 192) / 192**0.5)
    x = torch.randn(1, 192)
    x[:, 7] *= 25.0
    xq, xs = fp8.quantize_rows(x)
    w = fp8.dequantize(p["weight"], p["weight_scale"])
    return xq, xs, w, _gemv(xq, xs, w)


def _bumped(xq: torch.Tensor, cols: list[int]) -> torch.Tensor:
    """xq with the codes at cols one e4m3 step larger in magnitude (the next byte: sign and magnitude)."""
    b = xq.view(torch.uint8).clone()
    b[0, cols] += 1
    return b.view(fp8.DTYPE)


def test_accepts_codes_one_step_apart(case):
    xq, xs, w, ref = case
    big = xq[0].float().abs().argsort(descending=True)[1:4].tolist()  # the largest codes but the amax: the worst
    assert_fp8_sqnr(_gemv(_bumped(xq, big[:1]), xs, w), ref)  # ~40 dB
    assert_fp8_sqnr(_gemv(_bumped(xq, big), xs, w), ref)  # all three: ~35 dB
    assert_fp8_sqnr(_gemv(_bumped(xq, big[:1]), xs, w).bfloat16(), ref.bfloat16())  # and the bf16 rounding
    with pytest.raises(AssertionError):  # on CPU (interpreted) the dtype table stays: one step is far outside
        assert_fp8_close(_gemv(_bumped(xq, big[:1]), xs, w), ref)


@pytest.mark.parametrize("bug", ["2x scale", "zeroed N tile", "dropped K step", "no bias"])
def test_rejects_kernel_bugs(case, bug):
    xq, xs, w, ref = case
    if bug == "2x scale":
        out = _gemv(xq, 2 * xs, w)  # 0 dB
    elif bug == "zeroed N tile":
        out = _gemv(xq, xs, w)
        out[:, 16:32] = 0.0  # one 16-row weight tile never written: ~5 dB
    elif bug == "dropped K step":
        codes = xq.float()
        codes[:, 128:192] = 0.0  # the last BK = 64 step (or split), without the outlier channel: ~8 dB
        out = _gemv(codes, xs, w)
    else:
        bias = torch.randn(40)
        out, ref = _gemv(xq, xs, w), ref + bias  # ~6 dB
    with pytest.raises(AssertionError, match="SQNR"):
        assert_fp8_sqnr(out, ref)


def test_rejects_shape_dtype_and_non_finite(case):
    xq, xs, w, ref = case
    with pytest.raises(AssertionError):
        assert_fp8_sqnr(ref[0], ref)  # [N] against [1, N]: sqnr alone would broadcast
    with pytest.raises(AssertionError):
        assert_fp8_sqnr(ref.bfloat16(), ref)
    nan = ref.clone()
    nan[0, 3] = float("nan")
    with pytest.raises(AssertionError, match="non-finite"):
        assert_fp8_sqnr(nan, ref)
