"""Triton RMSNorm and fused residual-add RMSNorm vs the canonical autodeploy::rmsnorm reference."""

from __future__ import annotations

import pytest
import torch

import autodeploy.ops  # noqa: F401
from autodeploy.backends.triton import rmsnorm
from tests.backends.triton.cases import DEVICE, dtypes, randn
from tests.helpers.tolerances import assert_close

reference = torch.ops.autodeploy.rmsnorm


@dtypes
@pytest.mark.parametrize("unit_offset", [False, True], ids=["llama", "gemma"])
@pytest.mark.parametrize("shape", [(3, 64), (2, 5, 48), (1, 1, 200)], ids=str)
def test_rmsnorm_matches_reference(shape, unit_offset, dtype):
    x = randn(*shape, dtype=dtype, scale=3.0)
    w = randn(shape[-1], dtype=dtype)
    out = torch.ops.autodeploy.triton_rmsnorm(x, w, 1e-6, unit_offset)
    assert out.shape == x.shape and out.dtype == dtype
    assert_close(out, reference(x, w, 1e-6, unit_offset))


@dtypes
def test_fused_add_rmsnorm(dtype):
    x, res = randn(4, 3, 96, dtype=dtype), randn(4, 3, 96, dtype=dtype, scale=4.0)
    w = randn(96, dtype=dtype)
    normed, new_res = torch.ops.autodeploy.triton_fused_add_rmsnorm(x, res, w, 1e-5, False)
    summed = x + res
    torch.testing.assert_close(new_res, summed, rtol=0, atol=0)  # the same rounding as the eager add
    assert_close(normed, reference(summed, w, 1e-5, False))


def test_strided_rows_and_fp32_weight_with_other_dtype():
    base = randn(6, 128)
    x = base[:, :64]  # rows 128 apart: read in place, no copy
    w = randn(64)
    assert_close(rmsnorm.launch(x, w, 1e-6, False), reference(x, w, 1e-6, False))
    if DEVICE == "cuda":
        xb = x.to(torch.bfloat16)
        assert_close(rmsnorm.launch(xb, w, 1e-6, True), reference(xb, w, 1e-6, True))


def test_empty_and_unsupported():
    w = randn(32)
    assert rmsnorm.launch(randn(0, 32), w, 1e-6, False).shape == (0, 32)
    assert not rmsnorm.supports(randn(2, 32, dtype=torch.float64), w)
    assert not rmsnorm.supports(randn(2, 32), w, residual=randn(2, 16))
    with pytest.raises(NotImplementedError, match="residual"):
        rmsnorm.launch(randn(2, 32), w, 1e-6, False, residual=randn(2, 16))


def test_opcheck_fake_and_schema():
    x, w = randn(2, 3, 32), randn(32)
    torch.library.opcheck(torch.ops.autodeploy.triton_rmsnorm.default, (x, w, 1e-6, False),
                          test_utils=("test_schema", "test_faketensor"))
    torch.library.opcheck(torch.ops.autodeploy.triton_fused_add_rmsnorm.default, (x, randn(2, 3, 32), w, 1e-6, True),
                          test_utils=("test_schema", "test_faketensor"))
