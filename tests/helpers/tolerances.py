"""The one tolerance table, and the SQNR floor of two FP8 paths. Never loosen an entry to make a test pass."""

from __future__ import annotations

import torch

from autodeploy.quantization.metrics import sqnr

# logits / op outputs against eager: relative tolerance and an absolute floor
TOL: dict[torch.dtype, dict[str, float]] = {
    torch.float32: dict(rtol=1e-4, atol=1e-5),
    torch.bfloat16: dict(rtol=2e-2, atol=2e-2),
    torch.float16: dict(rtol=2e-3, atol=2e-3),
}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype | None = None) -> None:
    tol = TOL[dtype or expected.dtype]
    torch.testing.assert_close(actual, expected, **tol)


def assert_close_relative(actual: torch.Tensor, expected: torch.Tensor, rel: float = 1e-4) -> None:
    """Max abs error relative to the reference's max magnitude (for logits: fp32 1e-4)."""
    err = (actual.float() - expected.float()).abs().max().item()
    scale = expected.float().abs().max().item() or 1.0
    assert err <= rel * scale, f"max abs error {err:.3e} exceeds {rel:g} x max |ref| {scale:.3e}"


# Two FP8 paths of one linear compiled on the GPU (a Triton kernel against autodeploy::fp8_linear): an SQNR
# floor in dB (fp64) over the whole output; the dtype table above is for same-precision ops. The paths may
# differ by (1) an x code one e4m3 step (1/16-1/8 of it) apart where x / s_x sits within an ulp or two of a
# tie: Triton's fp32 `/` is div.full.f32 (2 ulp) where torch divides exactly, bf16 / fp16 inputs land there
# often (these tests' fp32 ones never), and a reference rounding its input twice (Llama's norm, act(gate) *
# up) is a bf16 ulp off; (2) Hopper's FP8 MMA accumulating in ~14 bits (Triton's default on sm90 at 64-row
# tiles, _scaled_mm's fast accum): ~80 dB, yet past fp32's rtol; (3) the bf16 / fp16 output rounding: ~54 dB.
# A code a step off moves its row by step * w[:, j]: that row's SQNR is >= 18 dB + 10 log10(|x|^2 / x_j^2),
# ~45 dB for a typical element, ~31 for the largest non-amax one of a Gaussian row of 128 (a floor of 35
# would fail it); the failing GPU cases of these tests, emulated on CPU, give 36-65 dB. Bugs give far less
# (these tests' shapes, 200 draws): a 2x scale 0 dB, a zeroed N tile <= 8, the partial N tile <= 22, a
# dropped K step or split <= 21, rows swapped <= 7, no bias <= 14, channel scales a tile off <= 24.
# Rounding-mode bugs (20-38 dB) are for the bit-identity tests of the codes to catch.
FP8_PATHS_SQNR_DB = 30.0


def assert_fp8_sqnr(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Two FP8 paths' outputs: the same shape and dtype, finite where the reference is, SQNR >= the floor."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, (
        f"{actual.dtype} {list(actual.shape)} vs {expected.dtype} {list(expected.shape)}")
    assert torch.equal(actual.isfinite(), expected.isfinite()), "non-finite where the reference is finite"
    got = sqnr(actual, expected)
    assert got >= FP8_PATHS_SQNR_DB, f"SQNR {got:.1f} dB < {FP8_PATHS_SQNR_DB} dB"


def assert_fp8_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """A Triton FP8 kernel's output against the reference's. Interpreted (CPU): the dtype table, as the
    interpreter rounds x to the reference's codes exactly and e4m3 products are exact, so only fp32
    summation order parts them. Compiled (CUDA): assert_fp8_sqnr."""
    if actual.is_cuda:
        assert_fp8_sqnr(actual, expected)
    else:
        assert_close(actual, expected)
