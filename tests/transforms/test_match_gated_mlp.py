"""match_gated_mlp on tiny MLPs spelled like transformers' Llama, Gemma and Phi3 (fused gate_up)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.export import Dim

import autodeploy.ops  # noqa: F401  (registers torch.ops.autodeploy.*)
from autodeploy.graph import aten
from tests.helpers.transform_check import check_transform, export_module, run_transforms

GATED = torch.ops.autodeploy.gated_mlp_act.default
ACTS = {"silu": F.silu, "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"), "gelu": F.gelu}
ACT_OPS = {"silu": aten.silu.default, "gelu_tanh": aten.gelu.default, "gelu": aten.gelu.default}


class LlamaMLP(nn.Module):
    def __init__(self, act="silu", h=64, f=128):
        super().__init__()
        self.gate_proj, self.up_proj = nn.Linear(h, f, bias=False), nn.Linear(h, f, bias=False)
        self.down_proj, self.act = nn.Linear(f, h, bias=False), ACTS[act]

    def forward(self, x):
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class Phi3MLP(nn.Module):
    def __init__(self, h=64, f=128):
        super().__init__()
        self.gate_up_proj, self.down_proj = nn.Linear(h, 2 * f, bias=False), nn.Linear(f, h, bias=False)

    def forward(self, x):
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(up * F.silu(gate))


class TwoLayers(nn.Module):
    def __init__(self, mlp_factory):
        super().__init__()
        self.mlps = nn.ModuleList([mlp_factory(), mlp_factory()])

    def forward(self, x):
        for mlp in self.mlps:
            x = x + mlp(x)
        return x


def inputs(b, s):
    return (torch.randn(b, s, 64),)


DYN = ({0: Dim("b", min=1, max=8), 1: Dim("s", min=1, max=64)},)


@pytest.mark.parametrize("act", ["silu", "gelu_tanh", "gelu"])
def test_llama_style(act):
    gm = check_transform(
        TwoLayers(lambda: LlamaMLP(act)), inputs(2, 7), "match_gated_mlp",
        before={ACT_OPS[act]: 2, GATED: 0, aten.linear.default: 6},
        after={ACT_OPS[act]: 0, aten.mul.Tensor: 0, GATED: 2, aten.linear.default: 6},
        matches=2, second_inputs=inputs(3, 4), dynamic_shapes=DYN, run_first=["cleanup_export"],
    )
    assert all(n.args[2] == act for n in gm.graph.nodes if n.target is GATED)


def test_phi3_fused_gate_up_and_swapped_product():
    gm = check_transform(
        TwoLayers(Phi3MLP), inputs(2, 7), "match_gated_mlp",
        before={aten.silu.default: 2, aten.chunk.default: 2},
        after={aten.silu.default: 0, GATED: 2, aten.chunk.default: 2, aten.linear.default: 4},
        matches=2, second_inputs=inputs(1, 9), dynamic_shapes=DYN, run_first=["cleanup_export"],
    )
    for n in gm.graph.nodes:
        if n.target is GATED:  # gate is chunk 0, up is chunk 1, whatever order the product had
            assert [a.args[1] for a in n.args[:2]] == [0, 1]
            assert n.meta["val"].shape[-1] == 128


def test_expert_style_bmm_products_are_left_for_match_moe():
    class Experts(nn.Module):
        def __init__(self):
            super().__init__()
            self.gate_up = nn.Parameter(torch.randn(4, 256, 64))

        def forward(self, x):  # [e, t, h] @ -> chunk -> silu * up, like the batched_mm experts path
            gate, up = torch.bmm(x, self.gate_up.transpose(1, 2)).chunk(2, dim=-1)
            return F.silu(gate) * up

    x = torch.randn(4, 5, 64)
    dyn = ({1: Dim("t", min=1, max=64)},)
    check_transform(Experts(), (x,), "match_gated_mlp", before={aten.silu.default: 1},
                    after={aten.silu.default: 1, GATED: 0}, matches=0, second_inputs=(torch.randn(4, 3, 64),),
                    dynamic_shapes=dyn, run_first=["cleanup_export"])


def test_warns_for_dense_config_without_match():
    gm = export_module(nn.Linear(64, 64), inputs(2, 3), DYN)
    cfg = SimpleNamespace(model_type="llama", intermediate_size=128)
    assert "no gated MLP" in run_transforms(gm, ["match_gated_mlp"], hf_config=cfg)["match_gated_mlp"].warning
    moe = SimpleNamespace(model_type="qwen3_moe", intermediate_size=128, num_experts=4, mlp_only_layers=[])
    assert run_transforms(gm, ["match_gated_mlp"], hf_config=moe)["match_gated_mlp"].warning is None
