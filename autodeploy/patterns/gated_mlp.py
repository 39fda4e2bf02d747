"""Gated-MLP activation spellings -> autodeploy::gated_mlp_act.

    act(gate) * up          Llama / Mistral / Qwen / DeepSeek dense MLPs (silu), Gemma (gelu tanh)
    up * act(gate)          Phi3, with gate / up the two chunks of the fused gate_up_proj output

add / mul match in either operand order, so one pattern per activation covers both. gate and up
must come out of an aten.linear (or a chunk / split of one): MoE experts compute theirs with
bmm / grouped_mm and belong to match_moe.
"""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F

import autodeploy.ops  # noqa: F401  (registers torch.ops.autodeploy.*)
from autodeploy.graph import aten, is_op, val
from autodeploy.patterns.registry import Match, Pattern

_SPLITS = (aten.chunk.default, aten.split.Tensor, aten.split_with_sizes.default, aten.unsafe_split.Tensor)


def silu_mlp_pattern(gate, up):
    return F.silu(gate) * up


def gelu_tanh_mlp_pattern(gate, up):
    return F.gelu(gate, approximate="tanh") * up


def gelu_mlp_pattern(gate, up):
    return F.gelu(gate) * up


def _replacement(act: str):
    def gated_mlp_replacement(gate, up):
        return torch.ops.autodeploy.gated_mlp_act.default(gate, up, act)

    return gated_mlp_replacement


def _from_linear(node) -> bool:
    """node is aten.linear(...) or getitem(chunk / split(aten.linear(...)))."""
    if is_op(node, aten.linear):
        return True
    if node.op == "call_function" and node.target is operator.getitem:
        split = node.args[0]
        return is_op(split, _SPLITS) and is_op(split.args[0], aten.linear)
    return False


def gated_mlp_check(m: Match) -> bool:
    gate, up = m.inputs["gate"], m.inputs["up"]
    g, u = val(gate), val(up)
    if not isinstance(g, torch.Tensor) or not isinstance(u, torch.Tensor):
        return False
    same = g.dtype == u.dtype and g.dtype.is_floating_point and tuple(g.shape) == tuple(u.shape)
    return same and _from_linear(gate) and _from_linear(up)


def _example(sz, dtype):
    return dict(gate=torch.randn(sz.b, sz.s, sz.f, dtype=dtype), up=torch.randn(sz.b, sz.s, sz.f, dtype=dtype))


GATED_MLP_PATTERNS = [
    Pattern("silu", silu_mlp_pattern, _replacement("silu"), _example, gated_mlp_check),
    Pattern("gelu_tanh", gelu_tanh_mlp_pattern, _replacement("gelu_tanh"), _example, gated_mlp_check),
    Pattern("gelu", gelu_mlp_pattern, _replacement("gelu"), _example, gated_mlp_check),
]
