"""Triton gated-MLP activation (separate gate / up and fused gate_up) vs autodeploy::gated_mlp_act."""

from __future__ import annotations

import pytest
import torch

import autodeploy.ops  # noqa: F401
from autodeploy.backends.triton import gated_mlp
from tests.backends.triton.cases import dtypes, randn
from tests.helpers.tolerances import assert_close

reference = torch.ops.autodeploy.gated_mlp_act


@dtypes
@pytest.mark.parametrize("act", ["silu", "gelu_tanh", "gelu"])
def test_separate_gate_up(act, dtype):
    gate, up = randn(2, 3, 80, dtype=dtype, scale=3.0), randn(2, 3, 80, dtype=dtype)
    out = torch.ops.autodeploy.triton_gated_mlp_act(gate, up, act)
    assert out.shape == gate.shape and out.dtype == dtype
    assert_close(out, reference(gate, up, act))


@dtypes
@pytest.mark.parametrize("act", ["silu", "gelu_tanh"])
def test_fused_gate_up(act, dtype):
    gate_up = randn(5, 2 * 48, dtype=dtype, scale=3.0)
    out = torch.ops.autodeploy.triton_fused_gated_mlp_act(gate_up, act)
    assert out.shape == (5, 48)
    assert_close(out, reference(gate_up[:, :48], gate_up[:, 48:], act))


def test_wide_rows_span_several_blocks():
    gate, up = randn(3, 2500, scale=4.0), randn(3, 2500)  # 3 blocks of 1024 columns, the last partial
    assert_close(gated_mlp.launch(gate, up, "silu"), reference(gate, up, "silu"))


def test_unsupported():
    x = randn(2, 8)
    assert not gated_mlp.supports(x, x, "relu")
    assert not gated_mlp.supports(randn(2, 7), None, "silu")
    with pytest.raises(NotImplementedError, match="activation 'relu'"):
        gated_mlp.launch(x, x, "relu")


def test_opcheck_fake_and_schema():
    torch.library.opcheck(torch.ops.autodeploy.triton_gated_mlp_act.default, (randn(2, 16), randn(2, 16), "gelu"),
                          test_utils=("test_schema", "test_faketensor"))
    torch.library.opcheck(torch.ops.autodeploy.triton_fused_gated_mlp_act.default, (randn(3, 32), "silu"),
                          test_utils=("test_schema", "test_faketensor"))
