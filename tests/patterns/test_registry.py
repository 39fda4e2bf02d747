"""patterns/registry: literals, scalar binds, operand order, containment, checks, vals, two outputs."""

from __future__ import annotations

import torch
from torch import nn
from torch.export import Dim

from autodeploy.graph import aten, nodes_of
from autodeploy.patterns.registry import Pattern, apply_patterns
from tests.helpers.tolerances import assert_close
from tests.helpers.transform_check import export_module

CAP = 7.25  # sentinel


def softcap_pattern(x, cap):
    return torch.tanh(x / cap) * cap


def softcap_replacement(x, cap):
    # a stand-in "canonical" op: hardtanh clamps instead, so a rewrite is visible in the numbers
    return torch.ops.aten.hardtanh.default(x, -cap, cap)


def _example(sz, dtype):
    return dict(x=torch.randn(sz.b, sz.s, sz.h, dtype=dtype), cap=CAP)


class Softcap(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


DYN = ({0: Dim("b", min=1, max=8), 1: Dim("s", min=1, max=64)},)


def rewrite(fn, pattern, x=None):
    x = torch.randn(2, 5, 8) * 10 if x is None else x
    gm = export_module(Softcap(fn), (x,), DYN)
    matches = apply_patterns(gm, [pattern])
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return gm, matches, x


PAT = Pattern("softcap", softcap_pattern, softcap_replacement, _example)


def test_scalar_is_bound_and_replacement_gets_it():
    gm, matches, x = rewrite(lambda x: torch.tanh(x / 30.0) * 30.0, PAT)
    assert len(matches) == 1 and matches[0].inputs["cap"] == 30.0
    assert_close(gm(x), x.clamp(-30.0, 30.0))
    node = nodes_of(gm, aten.hardtanh)[0]
    assert node.meta["val"].shape[0] == gm.graph.find_nodes(op="placeholder")[0].meta["val"].shape[0]  # symbolic b


def test_one_scalar_must_bind_one_value():
    _, matches, _ = rewrite(lambda x: torch.tanh(x / 30.0) * 20.0, PAT)
    assert matches == []


def test_operand_order_of_mul_does_not_matter():
    _, matches, _ = rewrite(lambda x: 30.0 * torch.tanh(x / 30.0), PAT)
    assert len(matches) == 1


def test_inner_node_used_outside_blocks_the_match():
    def fn(x):
        t = torch.tanh(x / 30.0)
        return t * 30.0 + t
    _, matches, _ = rewrite(fn, PAT)
    assert matches == []


def test_check_rejects_and_extends():
    seen = []

    def check(m):
        seen.append(m.inputs["cap"])
        return {"cap": 1.0} if m.inputs["cap"] > 10 else False

    pat = Pattern("softcap", softcap_pattern, softcap_replacement, _example, check)
    gm, matches, x = rewrite(lambda x: torch.tanh(x / 30.0) * 30.0 + torch.tanh(x / 5.0) * 5.0, pat)
    assert sorted(seen) == [5.0, 30.0] and len(matches) == 1
    assert_close(gm(x), x.clamp(-1.0, 1.0) + torch.tanh(x / 5.0) * 5.0)


def test_dims_are_exact_shape_sizes_are_wildcards():
    def t_pattern(x):
        return x.view(x.shape[0], x.shape[1], 2, -1).transpose(1, 2)

    def t_replacement(x):
        return torch.ops.aten.neg.default(x)  # wrong on purpose: only the match count matters

    pat = Pattern("split_heads", t_pattern, t_replacement, lambda sz, dt: dict(x=torch.randn(sz.b, sz.s, 2 * sz.d, dtype=dt)))
    _, matches, _ = rewrite(lambda x: x.view(x.shape[0], x.shape[1], 2, 4).transpose(1, 2), pat)
    assert len(matches) == 0  # 4 is the same in both example traces (-1 is): an exact literal
    _, matches, _ = rewrite(lambda x: x.view(x.shape[0], x.shape[1], 2, -1).transpose(1, 2), pat)
    assert len(matches) == 1
    _, matches, _ = rewrite(lambda x: x.view(x.shape[0], x.shape[1], 2, -1).transpose(1, 3), pat)
    assert len(matches) == 0  # a different dim is a different op


def test_two_outputs_pair_within_a_layer():
    def pair_pattern(a, b):
        return torch.relu(a) + 1.0, torch.relu(b) + 1.0

    def pair_replacement(a, b):
        return torch.ops.aten.add.Tensor(a, 2.0), torch.ops.aten.add.Tensor(b, 2.0)

    pat = Pattern("pair", pair_pattern, pair_replacement,
                  lambda sz, dt: dict(a=torch.randn(sz.b, sz.h, dtype=dt), b=torch.randn(sz.b, sz.h, dtype=dt)))
    gm, matches, x = rewrite(lambda x: (torch.relu(x) + 1.0) * (torch.relu(-x) + 1.0), pat)
    assert len(matches) == 1
    assert_close(gm(x), (x + 2.0) * (-x + 2.0))
