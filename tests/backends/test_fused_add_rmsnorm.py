"""autodeploy::fused_add_rmsnorm reference vs the unfused `x + residual` then autodeploy::rmsnorm (bit-exact)."""

from __future__ import annotations

import pytest
import torch

import autodeploy.ops  # noqa: F401
from tests.helpers.tolerances import assert_close

fused = torch.ops.autodeploy.fused_add_rmsnorm
rmsnorm = torch.ops.autodeploy.rmsnorm


def _inputs(*shape, dtype):
    x = torch.randn(*shape, dtype=dtype)
    residual = (torch.randn(*shape) * 4.0).to(dtype)  # the stream grows larger than a branch output
    return x, residual, (torch.randn(shape[-1]) * 0.1 + 1.0).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("unit_offset", [False, True], ids=["llama", "gemma"])
def test_bit_identical_to_add_then_rmsnorm(dtype, unit_offset):
    x, residual, w = _inputs(2, 5, 64, dtype=dtype)
    normed, new_residual = fused(x, residual, w, 1e-6, unit_offset)
    summed = x + residual
    assert normed.dtype == new_residual.dtype == dtype
    assert normed.shape == new_residual.shape == x.shape
    assert torch.equal(new_residual, summed)
    assert torch.equal(normed, rmsnorm(summed, w, 1e-6, unit_offset))


def test_operand_order_does_not_change_a_bit():
    # the transform calls the add's first operand x: `h + r` and `r + h` must give the same bits
    x, residual, w = _inputs(3, 64, dtype=torch.bfloat16)
    a, b = fused(x, residual, w, 1e-5), fused(residual, x, w, 1e-5)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_default_is_llama_form():
    x, residual, w = _inputs(4, 32, dtype=torch.float32)
    normed, _ = fused(x, residual, w, 1e-6)
    assert torch.equal(normed, rmsnorm(x + residual, w, 1e-6, False))
    assert not torch.equal(normed, rmsnorm(x + residual, w, 1e-6, True))


def test_outputs_are_fresh_tensors():
    x, residual, w = _inputs(2, 16, dtype=torch.float32)
    normed, new_residual = fused(x, residual, w, 1e-6)
    ptrs = {t.untyped_storage().data_ptr() for t in (x, residual, w)}
    assert normed.untyped_storage().data_ptr() not in ptrs
    assert new_residual.untyped_storage().data_ptr() not in ptrs | {normed.untyped_storage().data_ptr()}


def test_opcheck_schema_and_fake():
    x, residual, w = _inputs(2, 3, 32, dtype=torch.float32)
    for offset in (False, True):
        torch.library.opcheck(fused.default, (x, residual, w, 1e-6, offset), test_utils=("test_schema", "test_faketensor"))


def test_compiled_reference_matches():
    # the torch-compile backend candidate compiles this reference: the rmsnorm math must trace through
    from autodeploy.profiler.variants import compiled_variant

    x, residual, w = _inputs(2, 7, 64, dtype=torch.float32)
    normed, new_residual = compiled_variant(fused.default)(x, residual, w, 1e-6, True)
    torch.testing.assert_close(new_residual, x + residual, rtol=0, atol=0)
    assert_close(normed, rmsnorm(x + residual, w, 1e-6, True))  # Inductor may reorder the mean's sum
