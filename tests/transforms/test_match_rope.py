"""match_rope on tiny modules spelling RoPE the way transformers does (Llama, Phi3, GPT-OSS, DeepSeek)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.export import Dim

import autodeploy.ops  # noqa: F401  (registers torch.ops.autodeploy.*)
from autodeploy.graph import aten, nodes_of
from autodeploy.ops import bound_args
from tests.helpers.transform_check import check_transform, export_module, run_transforms

ROPE = torch.ops.autodeploy.rope.default


def rotate_half(x):
    x1 = x[..., : x.shape[-1] // 2]
    x2 = x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def llama(q, k, cos, sin):
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return (q * cos) + (rotate_half(q) * sin), (k * cos) + (rotate_half(k) * sin)


def phi3(q, k, cos, sin):
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    r = cos.shape[-1]
    q_rot, q_pass = q[..., :r], q[..., r:]
    k_rot, k_pass = k[..., :r], k[..., r:]
    return (torch.cat([(q_rot * cos) + (rotate_half(q_rot) * sin), q_pass], dim=-1),
            torch.cat([(k_rot * cos) + (rotate_half(k_rot) * sin), k_pass], dim=-1))


def gpt_oss(q, k, cos, sin):
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)

    def rot(x):
        first, second = torch.chunk(x, 2, dim=-1)
        return torch.cat((first * cos - second * sin, second * cos + first * sin), dim=-1)

    return rot(q), rot(k)


def deepseek(q, k, cos, sin):  # transformers 5.2x
    cos = cos[..., : cos.shape[-1] // 2].unsqueeze(1)
    sin = sin[..., : sin.shape[-1] // 2].unsqueeze(1)
    q1, q2, k1, k2 = q[..., 0::2], q[..., 1::2], k[..., 0::2], k[..., 1::2]
    return (torch.cat([q1 * cos - q2 * sin, q2 * cos + q1 * sin], dim=-1),
            torch.cat([k1 * cos - k2 * sin, k2 * cos + k1 * sin], dim=-1))


def deepseek_view(q, k, cos, sin):  # the older view / transpose / reshape spelling
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    b, h, s, d = q.shape
    q = q.view(b, h, s, d // 2, 2).transpose(4, 3).reshape(b, h, s, d)
    b, h, s, d = k.shape
    k = k.view(b, h, s, d // 2, 2).transpose(4, 3).reshape(b, h, s, d)
    return (q * cos) + (rotate_half(q) * sin), (k * cos) + (rotate_half(k) * sin)


class Layer(nn.Module):
    """q/k projections, RoPE from position_ids (HF's rotary module), then q·k scores."""

    def __init__(self, apply_rope, d=16, rot=16, half_table=False):
        super().__init__()
        self.apply_rope, self.d, self.half_table = apply_rope, d, half_table
        self.q_proj, self.k_proj = nn.Linear(64, 4 * d, bias=False), nn.Linear(64, 2 * d, bias=False)
        self.register_buffer("inv_freq", 1.0 / 10000 ** (torch.arange(0, rot, 2).float() / rot), persistent=False)

    def forward(self, x, position_ids):
        b, s, _ = x.shape
        freqs = position_ids[:, :, None].float() * self.inv_freq  # [b, s, rot / 2]
        emb = freqs if self.half_table else torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
        q = self.q_proj(x).view(b, s, -1, self.d).transpose(1, 2)
        k = self.k_proj(x).view(b, s, -1, self.d).transpose(1, 2)
        q, k = self.apply_rope(q, k, cos, sin)
        return torch.matmul(q, k.repeat_interleave(2, dim=1).transpose(2, 3))  # [b, n, s, s]


class TwoLayers(nn.Module):
    def __init__(self, *args, **kw):
        super().__init__()
        self.layers = nn.ModuleList([Layer(*args, **kw), Layer(*args, **kw)])

    def forward(self, x, position_ids):
        return tuple(layer(x, position_ids) for layer in self.layers)


def inputs(b, s, offset=0):
    return torch.randn(b, s, 64), torch.arange(offset, offset + s).expand(b, s)


DIMS = (Dim("b", min=1, max=8), Dim("s", min=2, max=64))
DYN = ({0: DIMS[0], 1: DIMS[1]}, {0: DIMS[0], 1: DIMS[1]})

CASES = {
    "llama": (dict(apply_rope=llama), False),
    "phi3_partial": (dict(apply_rope=phi3, rot=8), False),
    "phi3_full": (dict(apply_rope=phi3), False),
    "gpt_oss": (dict(apply_rope=gpt_oss, half_table=True), False),
    "deepseek": (dict(apply_rope=deepseek, d=8, rot=8), True),
    "deepseek_view": (dict(apply_rope=deepseek_view, d=8, rot=8), True),
}


@pytest.mark.parametrize("case", list(CASES))
def test_rope_spellings(case):
    kw, interleaved = CASES[case]
    gm = check_transform(
        TwoLayers(**kw), inputs(2, 7), "match_rope",
        before={ROPE: 0}, after={ROPE: 2, aten.neg.default: 0, aten.sin.default: 2, aten.cos.default: 2},
        matches=2, second_inputs=inputs(3, 5, offset=4), dynamic_shapes=DYN, run_first=["cleanup_export"],
    )
    for n in nodes_of(gm, ROPE):
        a = bound_args(n)
        assert a["interleaved"] is interleaved
        q, cos = a["q"].meta["val"], a["cos"].meta["val"]
        assert q.shape[2] == 4 and q.shape[3] == kw.get("d", 16)  # bsnd
        assert cos.shape[-1] == kw.get("rot", 16)  # full-width table, also for GPT-OSS's half table
        # the op's bsnd input comes straight from the projection's view: the transposes cancelled
        assert a["q"].target is aten.view.default and a["k"].target is aten.view.default


def test_no_rope_warns_when_the_config_has_rotary_embeddings():
    gm = export_module(nn.Linear(64, 64), (torch.randn(2, 3, 64),), ({0: DIMS[0], 1: DIMS[1]},))
    info = run_transforms(gm, ["match_rope"], hf_config=SimpleNamespace(model_type="llama", rope_theta=1e4))
    assert info["match_rope"].matches == 0 and "no RoPE" in info["match_rope"].warning
    info = run_transforms(gm, ["match_rope"], hf_config=SimpleNamespace(model_type="gpt2"))
    assert info["match_rope"].warning is None


def test_bf16_llama():
    def bf16_inputs(b, s):
        x, pos = inputs(b, s)
        return x.to(torch.bfloat16), pos

    check_transform(
        TwoLayers(llama).to(torch.bfloat16), bf16_inputs(2, 7), "match_rope", before={ROPE: 0}, after={ROPE: 2},
        matches=2, second_inputs=bf16_inputs(1, 9), dynamic_shapes=DYN, dtype=torch.bfloat16, run_first=["cleanup_export"],
    )
