"""The one tolerance table. Never loosen an entry to make a test pass."""

from __future__ import annotations

import torch

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
