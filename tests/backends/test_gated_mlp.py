"""autodeploy::gated_mlp_act reference vs act(gate) * up in plain PyTorch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import autodeploy.ops  # noqa: F401

gated_mlp_act = torch.ops.autodeploy.gated_mlp_act


@pytest.mark.parametrize(
    "act, fn",
    [("silu", F.silu), ("gelu_tanh", lambda x: F.gelu(x, approximate="tanh")), ("gelu", F.gelu)],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_activation_times_up(act, fn, dtype):
    gate, up = torch.randn(2, 5, 128, dtype=dtype), torch.randn(2, 5, 128, dtype=dtype)
    out = gated_mlp_act(gate, up, act)
    assert out.dtype == dtype
    assert torch.equal(out, fn(gate) * up)


def test_activations_differ():
    gate, up = torch.randn(64), torch.ones(64)
    outs = [gated_mlp_act(gate, up, a) for a in ("silu", "gelu_tanh", "gelu")]
    assert not torch.equal(outs[0], outs[1]) and not torch.equal(outs[1], outs[2])


def test_unknown_activation_raises():
    with pytest.raises(ValueError, match="unknown activation 'relu2'"):
        gated_mlp_act(torch.randn(4), torch.randn(4), "relu2")
