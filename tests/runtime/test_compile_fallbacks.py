"""register_fallbacks: Inductor gets a fallback for each custom op before it meets the op.

The hazard it removes (torch 2.11 printing the IR behind an op's first call site, exponential in the
depth of a DAG of two-output ops) only shows on that torch and on deep graphs; here: the ops are
registered, nothing else is, and a compiled deep chain whose last op is first met at the end still
equals eager.
"""

from __future__ import annotations

import torch
from torch import fx, nn

import autodeploy.ops  # noqa: F401  (registers the ops)
from autodeploy.runtime.compile.fallbacks import custom_ops, register_fallbacks
from tests.helpers.tolerances import assert_close

ADD_NORM = torch.ops.autodeploy.fused_add_rmsnorm.default
NORM_LINEAR = torch.ops.autodeploy.add_rmsnorm_linear.default


class DeepChain(nn.Module):
    """depth x (add + RMSNorm, two outputs both used), then the fused norm + linear, first met last."""

    def __init__(self, depth: int = 12, h: int = 16, n: int = 8):
        super().__init__()
        self.depth = depth
        self.norm_w = nn.Parameter(torch.rand(h) + 0.5)
        self.w = nn.Parameter(torch.randn(n, h) / h**0.5)

    def forward(self, x, residual):
        for _ in range(self.depth):
            normed, residual = ADD_NORM(x, residual, self.norm_w, 1e-6, False)
            x = torch.tanh(normed) * 0.5  # an aten op between the custom ops, as in a layer
        out, _ = NORM_LINEAR(x, residual, self.norm_w, 1e-6, False, self.w, None)
        return out  # [T, n]


def test_custom_ops_lists_only_non_aten_ops_in_first_use_order():
    gm = fx.symbolic_trace(DeepChain(depth=2))
    assert custom_ops(gm) == [ADD_NORM, NORM_LINEAR]


def test_every_custom_op_gets_a_lowering_and_compiled_output_matches_eager():
    from torch._inductor import lowering

    torch.manual_seed(0)
    model = DeepChain()
    gm = fx.symbolic_trace(model)
    register_fallbacks(gm)
    assert ADD_NORM in lowering.lowerings and NORM_LINEAR in lowering.lowerings
    assert register_fallbacks(gm) == []  # idempotent: nothing left to register
    x, res = torch.randn(5, 16), torch.randn(5, 16)
    with torch.no_grad():
        assert_close(torch.compile(gm, dynamic=True)(x, res), gm(x, res), dtype=torch.float32)
