"""match_rmsnorm on tiny modules spelling RMSNorm the way transformers does (Llama, Gemma, GPT-OSS)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.export import Dim

import autodeploy.ops  # noqa: F401  (registers torch.ops.autodeploy.*)
from autodeploy.graph import aten
from tests.helpers.norms import GemmaNorm, LlamaNorm
from tests.helpers.transform_check import check_transform, export_module, run_transforms

RMSNORM = torch.ops.autodeploy.rmsnorm.default


class GptOssNorm(LlamaNorm):
    def forward(self, x):
        dtype = x.dtype
        x = x.to(torch.float32)
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return (self.weight * x).to(dtype)


class Block(nn.Module):
    """pre-norm -> linear -> per-head norm (Qwen3 q_norm style) -> post norm."""

    def __init__(self, norm_cls, h=64, heads=4):
        super().__init__()
        self.pre, self.head, self.post = norm_cls(h, 1e-6), norm_cls(h // heads, 1e-5), norm_cls(h, 1e-6)
        self.proj, self.heads = nn.Linear(h, h, bias=False), heads

    def forward(self, x):
        b, s, h = x.shape
        y = self.proj(self.pre(x)).view(b, s, self.heads, h // self.heads)
        return self.post(self.head(y).reshape(b, s, h) + x)


def inputs(b, s, dtype=torch.float32):
    return (torch.randn(b, s, 64, dtype=dtype),)


DYN = ({0: Dim("b", min=1, max=8), 1: Dim("s", min=1, max=64)},)


@pytest.mark.parametrize("norm_cls", [LlamaNorm, GemmaNorm, GptOssNorm], ids=["llama", "gemma", "gpt_oss"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rmsnorm_spellings(norm_cls, dtype):
    gm = check_transform(
        Block(norm_cls).to(dtype), inputs(2, 7, dtype), "match_rmsnorm",
        before={aten.rsqrt.default: 3, RMSNORM: 0},
        after={aten.rsqrt.default: 0, aten.pow.Tensor_Scalar: 0, aten.mean.dim: 0, RMSNORM: 3},
        matches=3, second_inputs=inputs(3, 5, dtype), dynamic_shapes=DYN, dtype=dtype, run_first=["cleanup_export"],
    )
    nodes = [n for n in gm.graph.nodes if n.target is RMSNORM]
    assert [n.args[2] for n in nodes] == [1e-6, 1e-5, 1e-6]
    assert all(n.args[3] is (norm_cls is GemmaNorm) for n in nodes)
    assert all(n.meta["val"].dtype == dtype for n in nodes)
    assert all(n.meta["val"].shape[-1] == n.args[0].meta["val"].shape[-1] for n in nodes)


def test_other_normalizations_left_alone():
    class NotRms(nn.Module):  # mean over the wrong dim, and a LayerNorm
        def __init__(self):
            super().__init__()
            self.ln = nn.LayerNorm(64)

        def forward(self, x):
            y = x * torch.rsqrt(x.pow(2).mean(1, keepdim=True) + 1e-6)
            return self.ln(y)

    check_transform(NotRms(), inputs(2, 7), "match_rmsnorm", before={aten.rsqrt.default: 1},
                    after={aten.rsqrt.default: 1, RMSNORM: 0}, matches=0,
                    second_inputs=inputs(3, 4), dynamic_shapes=DYN, run_first=["cleanup_export"])


def test_warns_when_config_promises_rmsnorm():
    class Plain(nn.Module):
        def forward(self, x):
            return torch.nn.functional.layer_norm(x, (64,))

    gm = export_module(Plain(), inputs(2, 7), DYN)
    info = run_transforms(gm, ["match_rmsnorm"], hf_config=SimpleNamespace(rms_norm_eps=1e-6))["match_rmsnorm"]
    assert info.matches == 0 and "no RMSNorm" in info.warning
    info = run_transforms(gm, ["match_rmsnorm"], hf_config=SimpleNamespace(layer_norm_epsilon=1e-5))["match_rmsnorm"]
    assert info.warning is None
