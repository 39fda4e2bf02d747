"""insert_kv_cache on synthetic decoders that call autodeploy::attention (every attention variant).

The model is exported through autodeploy.export.export_model, like a real one; after the
transform the graph is stepped through CachedModel (chunked prefill, decodes, sequences mixed in
one step) and each step's last-token logits must equal the eager model on the whole sequence.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

import autodeploy.ops  # noqa: F401
from autodeploy.export import export_model
from autodeploy.graph import aten, nodes_of
from autodeploy.runtime.cached_model import CachedModel, has_kv_cache
from autodeploy.runtime.kv_cache import LayerCacheSpec
from autodeploy.runtime.sequence_info import SequenceInfo
from tests.helpers.tolerances import assert_close_relative
from tests.helpers.transform_check import count, run_transforms

ATTN = torch.ops.autodeploy.attention.default
CACHED = torch.ops.autodeploy.cached_attention.default
VOCAB, HIDDEN = 100, 64


class Layer(nn.Module):
    def __init__(self, n, n_kv, d, d_v, window=None, softcap=None, sinks=False):
        super().__init__()
        self.n, self.n_kv, self.d, self.d_v = n, n_kv, d, d_v
        self.window, self.softcap = window, softcap
        self.q = nn.Linear(HIDDEN, n * d, bias=False)
        self.k = nn.Linear(HIDDEN, n_kv * d, bias=False)
        self.v = nn.Linear(HIDDEN, n_kv * d_v, bias=False)
        self.o = nn.Linear(n * d_v, HIDDEN, bias=False)
        self.sinks = nn.Parameter(torch.randn(n)) if sinks else None

    def forward(self, x, position_ids):
        b, s, _ = x.shape
        # a position-dependent rotation stand-in: positions must reach the cached k as in RoPE
        phase = torch.cos(position_ids.float() * 0.1).unsqueeze(-1)  # [b, s, 1]
        q = (self.q(x) * phase).view(b, s, self.n, self.d)
        k = (self.k(x) * phase).view(b, s, self.n_kv, self.d)
        v = self.v(x).view(b, s, self.n_kv, self.d_v)
        out = torch.ops.autodeploy.attention(q, k, v, self.sinks, self.d**-0.5, True, self.window, self.softcap)
        return x + self.o(out.reshape(b, s, -1))


class TinyDecoder(nn.Module):
    """HF-shaped: forward(input_ids=, position_ids=, use_cache=) -> .logits."""

    def __init__(self, layers, final_softcap=None, logit_gain=False):
        super().__init__()
        self.logit_gain = nn.Parameter(torch.rand(VOCAB) + 0.5) if logit_gain else None
        self.embed = nn.Embedding(VOCAB, HIDDEN)
        self.layers = nn.ModuleList(layers)
        self.norm = nn.LayerNorm(HIDDEN)
        self.lm_head = nn.Linear(HIDDEN, VOCAB, bias=False)
        self.final_softcap = final_softcap

    def forward(self, input_ids, position_ids, use_cache=False):
        x = self.embed(input_ids)
        for layer in self.layers:
            x = layer(x, position_ids)
        logits = self.lm_head(self.norm(x))
        if self.final_softcap is not None:
            logits = torch.tanh(logits / self.final_softcap) * self.final_softcap
        if self.logit_gain is not None:  # a per-vocab parameter after the lm_head: the gather stays at the output
            logits = logits * self.logit_gain
        return SimpleNamespace(logits=logits.float())


VARIANTS = {
    "gqa": lambda: TinyDecoder([Layer(4, 2, 16, 16), Layer(4, 2, 16, 16)]),
    "window_softcap": lambda: TinyDecoder([Layer(4, 2, 16, 16, window=3, softcap=20.0), Layer(4, 2, 16, 16)],
                                          final_softcap=30.0),
    "sinks_window": lambda: TinyDecoder([Layer(4, 4, 16, 16, window=4, sinks=True), Layer(4, 1, 16, 16, sinks=True)]),
    "mla_dv": lambda: TinyDecoder([Layer(4, 4, 24, 16), Layer(4, 4, 24, 16)]),
    "logit_gain": lambda: TinyDecoder([Layer(4, 2, 16, 16), Layer(4, 2, 16, 16)], logit_gain=True),
}


def transformed(variant):
    model = VARIANTS[variant]().eval()
    gm = export_model(model, max_batch_size=4, max_seq_len=64)
    assert count(gm, ATTN) == 2 and count(gm, CACHED) == 0
    infos = run_transforms(gm, ["insert_kv_cache"])
    return model, gm, infos["insert_kv_cache"]


def eager_last_logits(model, ids):
    with torch.no_grad():
        t = torch.tensor([ids])
        return model(t, torch.arange(len(ids))[None]).logits[0, -1]


def step_and_check(model, cm, schedule, prompts, page_perm):
    """schedule: per step, tokens to advance each sequence (0 = not scheduled)."""
    pages_per_seq = cm.num_pages // len(prompts)
    pages = [page_perm[i * pages_per_seq : (i + 1) * pages_per_seq] for i in range(len(prompts))]
    done = [0] * len(prompts)
    for counts in schedule:
        active = [(i, c) for i, c in enumerate(counts) if c]
        assert all(done[i] + c <= len(prompts[i]) for i, c in active), "schedule runs past a prompt"
        info = SequenceInfo.build([(prompts[i][done[i] : done[i] + c], done[i], pages[i]) for i, c in active],
                                  cm.page_size)
        logits = cm(info)
        assert logits.shape == (len(active), VOCAB)
        for row, (i, c) in enumerate(active):
            done[i] += c
            assert_close_relative(logits[row], eager_last_logits(model, prompts[i][: done[i]]))


def cached_steps(model, gm):
    cm = CachedModel(gm, num_pages=24, page_size=4)
    gen = torch.Generator().manual_seed(3)
    prompts = [torch.randint(VOCAB, (n,), generator=gen).tolist() for n in (13, 9, 7)]
    perm = torch.randperm(24, generator=gen).tolist()
    # seq 0: prefill in 2 chunks then decodes; seq 1 joins mid-way; seq 2 whole prefill; then all decode
    step_and_check(model, cm, [[5, 0, 0], [3, 4, 6], [1, 5, 1], [1, 0, 0], [1, 0, 0], [1, 0, 0], [1, 0, 0]],
                   prompts, perm)


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v != "logit_gain"])
def test_rewrite_and_cached_steps_match_eager(variant):
    model, gm, info = transformed(variant)
    assert info.matches == 2 and info.warning is None and info.details["gather_before_lm_head"]
    assert count(gm, ATTN) == 0 and count(gm, CACHED) == 2
    names = [n.name for n in gm.graph.nodes if n.op == "placeholder"]
    assert names == ["input_ids", "position_ids", *SequenceInfo.GRAPH_INPUTS,
                     "k_cache_0", "v_cache_0", "k_cache_1", "v_cache_1"]
    # the lm_head runs on the gathered rows: its input is [1, b, H]
    (lm_head,) = [n for n in nodes_of(gm, aten.linear) if n.meta["val"].shape[-1] == VOCAB]
    (seq_lens,) = gm.graph.find_nodes(op="placeholder", target="seq_lens")
    assert str(lm_head.args[0].meta["val"].shape[1]) == str(seq_lens.meta["val"].shape[0])
    cached_steps(model, gm)


def test_unrecognized_head_gathers_logits_at_the_output():
    model, gm, info = transformed("logit_gain")
    assert info.matches == 2 and not info.details["gather_before_lm_head"] and "lm_head" in info.warning
    assert count(gm, CACHED) == 2
    cached_steps(model, gm)


def test_cache_spec_recorded():
    _, gm, _ = transformed("mla_dv")
    assert has_kv_cache(gm)
    assert gm.meta["kv_cache_spec"] == [LayerCacheSpec(4, 24, 16, torch.float32, None)] * 2
    _, gm, _ = transformed("sinks_window")
    assert [s.sliding_window for s in gm.meta["kv_cache_spec"]] == [4, None]
    assert [s.n_kv for s in gm.meta["kv_cache_spec"]] == [4, 1]


def test_vals_stay_symbolic():
    _, gm, _ = transformed("gqa")
    ph = {n.name: n.meta["val"] for n in gm.graph.nodes if n.op == "placeholder"}
    tokens = ph["input_ids"].shape[1]
    assert ph["input_ids"].shape[0] == 1 and isinstance(tokens, torch.SymInt)
    assert ph["slot_mapping"].shape[0] is tokens or str(ph["slot_mapping"].shape[0]) == str(tokens)
    b = ph["seq_lens"].shape[0]
    assert isinstance(b, torch.SymInt) and str(b) != str(tokens)
    assert all(isinstance(s, torch.SymInt) for s in ph["k_cache_0"].shape[:2])
    missing = [n.name for n in gm.graph.nodes if n.op in ("placeholder", "call_function") and "val" not in n.meta]
    assert not missing, f"nodes without meta['val']: {missing}"
    (out,) = gm.graph.find_nodes(op="output")
    logits = out.args[0].meta["val"]
    assert logits.dim() == 2 and str(logits.shape[0]) == str(b)  # [b, V]


def test_not_canonical_left_unchanged():
    class Sdpa(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(VOCAB, HIDDEN)
            self.lm_head = nn.Linear(HIDDEN, VOCAB, bias=False)

        def forward(self, input_ids, position_ids, use_cache=False):
            x = self.embed(input_ids).view(*input_ids.shape, 4, 16).transpose(1, 2)
            x = torch.nn.functional.scaled_dot_product_attention(x, x, x, is_causal=True)
            return SimpleNamespace(logits=self.lm_head(x.transpose(1, 2).reshape(*input_ids.shape, HIDDEN)))

    model = Sdpa().eval()
    gm = export_model(model, max_batch_size=4, max_seq_len=64)
    code = gm.code
    info = run_transforms(gm, ["insert_kv_cache"])["insert_kv_cache"]
    assert info.matches == 0 and not info.changed and "not canonicalized" in info.warning
    assert gm.code == code and not has_kv_cache(gm)
    ids = torch.randint(VOCAB, (2, 5))
    torch.testing.assert_close(gm(ids, torch.arange(5).expand(2, 5)), model(ids, None).logits)


QUANTIZERS = {"fp8": torch.ops.autodeploy.fp8_linear.default, "int8": torch.ops.autodeploy.int8_wo_linear.default,
              "int4": torch.ops.autodeploy.int4_wo_linear.default}


@pytest.mark.parametrize("method", list(QUANTIZERS))
def test_quantized_lm_head_runs_on_the_gathered_rows(method):
    """A quantized lm_head (Stage.QUANTIZE runs first) is still found: the gather moves in front of it, so a
    step computes b rows of logits, not T (a prefill of 128 tokens: 128 rows of a 128k vocabulary)."""
    from autodeploy.models.weights import load_weights
    from tests.quantization.models import model_state, quant_recipe

    name = {"fp8": "quantize_fp8", "int8": "quantize_int8_weight_only", "int4": "quantize_int4_weight_only"}[method]
    cfg = {"exclude": []} if method != "int4" else {"exclude": [], "group_size": 32}
    model = VARIANTS["gqa"]().eval()
    gm = export_model(model, max_batch_size=4, max_seq_len=64)
    infos = run_transforms(gm, [name, "insert_kv_cache"], recipe=quant_recipe(**{name: cfg}))
    info = infos["insert_kv_cache"]
    assert info.warning is None and info.details["gather_before_lm_head"]
    (lm_head,) = [n for n in nodes_of(gm, QUANTIZERS[method]) if n.meta["val"].shape[-1] == VOCAB]
    assert lm_head.args[0].target is aten.index_select.default  # [1, b, H]: the gathered last tokens
    load_weights(gm, model_state(model), torch.device("cpu"))
    cm = CachedModel(gm, num_pages=8, page_size=4)
    ids = torch.randint(VOCAB, (9,), generator=torch.Generator().manual_seed(1)).tolist()
    whole = cm(SequenceInfo.build([(ids, 0, [0, 1, 2])], 4))  # one prefill step: one row of logits
    assert whole.shape == (1, VOCAB)
    cm2 = CachedModel(gm, num_pages=8, page_size=4)  # the same tokens as a prefill, then one decode
    cm2(SequenceInfo.build([(ids[:8], 0, [0, 1, 2])], 4))
    stepped = cm2(SequenceInfo.build([(ids[8:], 8, [0, 1, 2])], 4))
    assert_close_relative(stepped[0], whole[0])


def test_tuned_quantized_lm_head_is_found():
    """select_backends (Stage.FUSE) puts `<op>_tuned` where buckets disagree (decode: the GEMV, prefill: the
    reference): that lm_head is found too (the 8B FP8 graph on an H200 gathered its logits after it)."""
    from autodeploy.profiler.variants import tuned_variant
    from tests.quantization.models import quant_recipe

    fp8_linear = QUANTIZERS["fp8"]
    model = VARIANTS["gqa"]().eval()
    gm = export_model(model, max_batch_size=4, max_seq_len=64)
    run_transforms(gm, ["quantize_fp8"], recipe=quant_recipe(quantize_fp8={"exclude": []}))
    (head,) = [n for n in nodes_of(gm, fp8_linear) if n.meta["val"].shape[-1] == VOCAB]
    head.target = tuned_variant(fp8_linear, ("lm_head test",), [(1, fp8_linear)])
    info = run_transforms(gm, ["insert_kv_cache"])["insert_kv_cache"]
    assert info.warning is None and info.details["gather_before_lm_head"]
    assert head.args[0].target is aten.index_select.default
