"""match_attention on tiny two-layer attention modules spelled the way transformers spells them."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.export import Dim

import autodeploy.ops  # noqa: F401  (registers torch.ops.autodeploy.*)
from autodeploy.graph import aten, nodes_of
from autodeploy.ops import bound_args
from tests.helpers.transform_check import check_transform

ATTN = torch.ops.autodeploy.attention.default
SDPA = aten.scaled_dot_product_attention.default
SOFTMAX = aten.softmax.int


def repeat_kv(x, n_rep):
    b, n_kv, s, d = x.shape
    if n_rep == 1:
        return x
    return x[:, :, None, :, :].expand(b, n_kv, n_rep, s, d).reshape(b, n_kv * n_rep, s, d)


def causal_mask(x, window, additive, bidirectional=False):
    """[b, 1, s, s] like transformers' masks: bool (sdpa) or 0 / finfo.min (eager)."""
    b, s = x.shape[:2]
    i = torch.arange(s, device=x.device).unsqueeze(1)
    j = torch.arange(s, device=x.device).unsqueeze(0)
    keep = torch.ones(s, s, dtype=torch.bool, device=x.device) if bidirectional else j <= i
    if window is not None:
        keep = keep & (j > i - window)
    keep = keep[None, None].expand(b, 1, s, s)
    if additive:
        return torch.where(keep, torch.zeros((), dtype=x.dtype), torch.finfo(x.dtype).min)
    return keep


class Attention(nn.Module):
    def __init__(self, kind, n=4, n_kv=2, d=16, d_v=None, window=None, softcap=None, sinks=False, bidirectional=False):
        super().__init__()
        self.kind, self.n, self.n_kv, self.d, self.d_v = kind, n, n_kv, d, d_v or d
        self.window, self.softcap, self.bidirectional, self.scale = window, softcap, bidirectional, d**-0.5
        self.q_proj, self.k_proj = nn.Linear(64, n * d), nn.Linear(64, n_kv * d)
        self.v_proj, self.o_proj = nn.Linear(64, n_kv * self.d_v), nn.Linear(n * self.d_v, 64)
        self.sinks = nn.Parameter(torch.randn(n)) if sinks else None

    def forward(self, x):
        b, s, _ = x.shape
        q = self.q_proj(x).view(b, s, -1, self.d).transpose(1, 2)
        k = self.k_proj(x).view(b, s, -1, self.d).transpose(1, 2)
        v = self.v_proj(x).view(b, s, -1, self.d_v).transpose(1, 2)
        rep = self.n // self.n_kv
        if self.kind == "sdpa":
            mask = causal_mask(x, self.window, additive=False, bidirectional=self.bidirectional)
            out = F.scaled_dot_product_attention(q, repeat_kv(k, rep), repeat_kv(v, rep), attn_mask=mask, scale=self.scale)
        elif self.kind == "sdpa_additive":
            mask = causal_mask(x, self.window, additive=True)
            out = F.scaled_dot_product_attention(q, repeat_kv(k, rep), repeat_kv(v, rep), attn_mask=mask, scale=self.scale)
        elif self.kind == "sdpa_is_causal_gqa":
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale, enable_gqa=True)
        else:
            out = self.eager(q, repeat_kv(k, rep), repeat_kv(v, rep), causal_mask(x, self.window, additive=True))
            return self.o_proj(out.reshape(b, s, -1))
        # transformers' sdpa_attention_forward: a reshape to the shape it has, then back to bsnd
        return self.o_proj(out.reshape(b, -1, s, self.d_v).transpose(1, 2).reshape(b, s, -1))

    def eager(self, q, k, v, mask):  # transformers' eager_attention_forward (Gemma2 softcap, GPT-OSS sinks)
        w = torch.matmul(q, k.transpose(2, 3)) * self.scale
        if self.softcap is not None:
            w = torch.tanh(w / self.softcap) * self.softcap
        w = w + mask
        if self.sinks is None:
            w = F.dropout(F.softmax(w, dim=-1, dtype=torch.float32).to(q.dtype), p=0.0, training=False)
        else:
            sinks = self.sinks.reshape(1, -1, 1, 1).expand(q.shape[0], -1, q.shape[-2], -1)
            logits = torch.cat([w, sinks], dim=-1)
            logits = logits - logits.max(dim=-1, keepdim=True).values
            probs = F.softmax(logits, dim=-1, dtype=logits.dtype)
            w = F.dropout(probs[..., :-1], p=0.0, training=False).to(v.dtype)
        return torch.matmul(w, v).transpose(1, 2).contiguous()  # [b, s, n, d_v]


class TwoLayers(nn.Module):
    """Layer 0 slides (when a window is given), layer 1 attends to everything, like Gemma2 / GPT-OSS."""

    def __init__(self, kind, window=None, **kw):
        super().__init__()
        self.layers = nn.ModuleList([Attention(kind, window=window, **kw), Attention(kind, **kw)])

    def forward(self, x):
        for layer in self.layers:
            x = x + layer(x)
        return x


def inputs(b, s):
    return (torch.randn(b, s, 64),)


DYN = ({0: Dim("b", min=1, max=8), 1: Dim("s", min=2, max=64)},)


def config(window=None):
    types = ["sliding_attention", "full_attention"] if window else None
    return SimpleNamespace(num_hidden_layers=2, sliding_window=window, layer_types=types)


def run(module, window=None, before=None, matches=2):
    return check_transform(
        module, inputs(2, 7), "match_attention", before=before or {}, after={ATTN: matches, SDPA: 0, SOFTMAX: 0},
        matches=matches, second_inputs=inputs(3, 5), dynamic_shapes=DYN, hf_config=config(window),
        run_first=["cleanup_export"],
    )


def attention_args(gm):
    return [bound_args(n) for n in nodes_of(gm, ATTN)]


def assert_no_repeat_kv_or_mask(gm):
    assert not [n for n in nodes_of(gm, aten.expand) if n.meta["val"].dim() == 5], "repeat_kv expand left"
    assert not nodes_of(gm, (aten.arange, aten.le, aten.gt, aten.where)), "mask subgraph left"


@pytest.mark.parametrize("n_kv", [2, 1, 4], ids=["gqa", "mqa", "mha"])
def test_sdpa_repeat_kv_bool_mask(n_kv):
    gm = run(TwoLayers("sdpa", n_kv=n_kv), before={SDPA: 2})
    assert_no_repeat_kv_or_mask(gm)
    for a in attention_args(gm):
        assert a["causal"] and a["sliding_window"] is None and a["scale"] == 0.25 and a["sinks"] is None
        assert a["k"].meta["val"].shape[2] == n_kv  # bsnd, KV heads not repeated


def test_sdpa_sliding_window_per_layer():
    gm = run(TwoLayers("sdpa", window=3), window=3)
    assert [a["sliding_window"] for a in attention_args(gm)] == [3, None]
    assert_no_repeat_kv_or_mask(gm)


def test_sdpa_additive_mask_and_window_read_from_the_mask():
    # the config says nothing about a window: the probe of the mask finds it
    gm = run(TwoLayers("sdpa_additive", window=4))
    assert [a["sliding_window"] for a in attention_args(gm)] == [4, None]


def test_sdpa_is_causal_enable_gqa():
    gm = run(TwoLayers("sdpa_is_causal_gqa"))
    assert [a["sliding_window"] for a in attention_args(gm)] == [None, None]


def test_eager_softcap_window_like_gemma2():
    gm = run(TwoLayers("eager", window=3, softcap=5.0), window=3, before={SOFTMAX: 2, aten.tanh.default: 2})
    args = attention_args(gm)
    assert [a["sliding_window"] for a in args] == [3, None]
    assert [a["logit_softcap"] for a in args] == [5.0, 5.0]
    assert not nodes_of(gm, aten.tanh)
    assert_no_repeat_kv_or_mask(gm)


def test_eager_sinks_like_gpt_oss():
    gm = run(TwoLayers("eager", window=4, sinks=True), window=4, before={SOFTMAX: 2, aten.cat.default: 2})
    args = attention_args(gm)
    assert all(a["sinks"].op == "get_attr" for a in args)
    assert [a["sliding_window"] for a in args] == [4, None]
    assert not nodes_of(gm, (aten.cat, aten.max))


def test_value_head_dim_differs_like_mla():
    gm = run(TwoLayers("sdpa", n_kv=4, d=24, d_v=16))
    assert all(n.meta["val"].shape[-1] == 16 for n in nodes_of(gm, ATTN))


def test_op_layout_is_bsnd_with_no_transposes_left_around_it():
    gm = run(TwoLayers("sdpa"))
    for n in nodes_of(gm, ATTN):
        assert all(a.target is aten.view.default for a in n.args[:3])  # q / k / v straight from their views
        assert [u.target for u in n.users] == [aten.reshape.default]


def test_bidirectional_mask_is_left_alone_with_a_warning():
    module = TwoLayers("sdpa", bidirectional=True)
    gm = check_transform(
        module, inputs(2, 7), "match_attention", before={SDPA: 2}, after={ATTN: 0, SDPA: 2}, matches=0,
        second_inputs=inputs(3, 5), dynamic_shapes=DYN, hf_config=config(), run_first=["cleanup_export"],
    )
    from tests.helpers.transform_check import run_transforms

    info = run_transforms(gm, ["match_attention"], hf_config=config())["match_attention"]
    assert "2 attention / softmax op(s) left" in info.warning and "not causal" in info.warning
