"""fuse_rope_cached_attention on cached graphs: rope -> views -> cached_attention becomes one op.

Each graph is exported, made cached by insert_kv_cache, copied, then fused; both copies are stepped
through CachedModel (chunked prefill, sequences joining, decodes at several batch sizes) and must give
the same logits bit for bit (the fused reference is the unfused pair), and match the eager model.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import autodeploy.ops  # noqa: F401
from autodeploy.export import export_model
from autodeploy.runtime.cached_model import CachedModel
from autodeploy.runtime.sequence_info import SequenceInfo
from tests.helpers.tiny_models import tiny_config, tiny_model
from tests.helpers.tolerances import assert_close_relative
from tests.helpers.transform_check import count, run_transforms

ops = torch.ops.autodeploy
ROPE, CACHED, FUSED = ops.rope.default, ops.cached_attention.default, ops.cached_attention_rope.default
VOCAB, HIDDEN = 100, 64


class Layer(nn.Module):
    """q / k / v projections, autodeploy::rope (d_rot of d, either layout), autodeploy::attention."""

    def __init__(self, d_rot=16, interleaved=False, window=None, leak_q=False):
        super().__init__()
        self.n, self.n_kv, self.d, self.d_rot = 4, 2, 16, d_rot
        self.interleaved, self.window, self.leak_q = interleaved, window, leak_q
        self.q = nn.Linear(HIDDEN, 4 * 16, bias=False)
        self.k = nn.Linear(HIDDEN, 2 * 16, bias=False)
        self.v = nn.Linear(HIDDEN, 2 * 16, bias=False)
        self.o = nn.Linear(4 * 16, HIDDEN, bias=False)

    def forward(self, x, position_ids):
        b, s, _ = x.shape
        inv = 1.0 / (100.0 ** (torch.arange(0, self.d_rot, 2, device=x.device).float() / self.d_rot))
        ang = position_ids.float()[..., None] * inv  # [b, s, d_rot / 2]
        emb = torch.cat([ang, ang], -1)
        q = self.q(x).view(b, s, self.n, self.d)
        k = self.k(x).view(b, s, self.n_kv, self.d)
        v = self.v(x).view(b, s, self.n_kv, self.d)
        q, k = ops.rope(q, k, emb.cos(), emb.sin(), self.interleaved)
        out = ops.attention(q, k, v, None, self.d**-0.5, True, self.window, None).reshape(b, s, -1)
        if self.leak_q:  # the rotated q has a second user: the rope must stay
            out = out + q.reshape(b, s, -1)
        return x + self.o(out)


class TinyDecoder(nn.Module):
    def __init__(self, layers):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, HIDDEN)
        self.layers = nn.ModuleList(layers)
        self.lm_head = nn.Linear(HIDDEN, VOCAB, bias=False)

    def forward(self, input_ids, position_ids, use_cache=False):
        x = self.embed(input_ids)
        for layer in self.layers:
            x = layer(x, position_ids)
        return SimpleNamespace(logits=self.lm_head(x).float())


VARIANTS = {
    "rotate_half": lambda: [Layer(), Layer()],
    "interleaved_window": lambda: [Layer(interleaved=True, window=5), Layer(interleaved=True)],
    "partial_rotary": lambda: [Layer(d_rot=8), Layer(d_rot=8, interleaved=True)],
}
# per step, new tokens of each sequence (0: not scheduled): chunked prefill, a sequence joining,
# decodes of 3 then 2 then 1 sequences (three batch sizes through the dynamic dims)
SCHEDULE = [[5, 0, 0], [3, 4, 6], [1, 1, 1], [1, 1, 1], [1, 0, 1], [0, 1, 0], [1, 1, 1]]


def cached(model, names=("insert_kv_cache",), hf_config=None):
    gm = export_model(model, max_batch_size=4, max_seq_len=64)
    run_transforms(gm, list(names), hf_config=hf_config)
    return gm


def steps(model, gm_a, gm_b, vocab):
    """Step both cached graphs through SCHEDULE; same logits bit for bit, and eager's last-token ones."""
    cms = [CachedModel(gm, num_pages=24, page_size=4) for gm in (gm_a, gm_b)]
    gen = torch.Generator().manual_seed(3)
    prompts = [torch.randint(vocab, (n,), generator=gen).tolist() for n in (14, 10, 11)]
    perm = torch.randperm(24, generator=gen).tolist()
    pages = [perm[i * 8 : (i + 1) * 8] for i in range(3)]
    done = [0, 0, 0]
    for counts in SCHEDULE:
        active = [(i, c) for i, c in enumerate(counts) if c]
        info = SequenceInfo.build([(prompts[i][done[i] : done[i] + c], done[i], pages[i]) for i, c in active], 4)
        got, want = (cm(info) for cm in cms)
        assert torch.equal(got, want)
        for row, (i, c) in enumerate(active):
            done[i] += c
            with torch.no_grad():
                ids = torch.tensor([prompts[i][: done[i]]])
                eager = model(ids, position_ids=torch.arange(done[i])[None]).logits[0, -1]
            assert_close_relative(got[row], eager)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_fuses_every_layer(variant):
    torch.manual_seed(0)
    model = TinyDecoder(VARIANTS[variant]()).eval()
    gm = cached(model)
    assert count(gm, ROPE) == 2 and count(gm, CACHED) == 2 and count(gm, FUSED) == 0
    unfused = copy.deepcopy(gm)
    info = run_transforms(gm, ["fuse_rope_cached_attention"])["fuse_rope_cached_attention"]
    assert info.matches == 2 and info.changed and info.details["ropes_left"] == 0
    assert count(gm, ROPE) == 0 and count(gm, CACHED) == 0 and count(gm, FUSED) == 2
    missing = [n.name for n in gm.graph.nodes if n.op == "call_function" and "val" not in n.meta]
    assert not missing, f"nodes without meta['val']: {missing}"
    steps(model, unfused, gm, VOCAB)


def test_rope_with_another_user_stays():
    torch.manual_seed(0)
    model = TinyDecoder([Layer(leak_q=True), Layer()]).eval()
    gm = cached(model)
    unfused = copy.deepcopy(gm)
    info = run_transforms(gm, ["fuse_rope_cached_attention"])["fuse_rope_cached_attention"]
    assert info.matches == 1 and info.details["ropes_left"] == 1
    assert count(gm, ROPE) == 1 and count(gm, CACHED) == 1 and count(gm, FUSED) == 1
    steps(model, unfused, gm, VOCAB)


def test_backend_twin_of_rope_is_fused():
    """On the GPU select_backends (Stage.FUSE) may have swapped rope for a same-schema twin already."""
    from autodeploy.profiler.variants import compiled_variant

    torch.manual_seed(0)
    model = TinyDecoder(VARIANTS["rotate_half"]()).eval()
    gm = cached(model)
    twin = compiled_variant(ROPE)
    for node in gm.graph.nodes:
        if node.target is ROPE:
            node.target = twin
    info = run_transforms(gm, ["fuse_rope_cached_attention"])["fuse_rope_cached_attention"]
    assert info.matches == 2 and count(gm, twin) == 0 and count(gm, FUSED) == 2


def test_tiny_llama_through_the_canonical_pipeline():
    model = tiny_model("llama")
    names = ["cleanup_export", "match_attention", "match_rope", "insert_kv_cache"]
    gm = cached(model, names, hf_config=tiny_config("llama"))
    unfused = copy.deepcopy(gm)
    info = run_transforms(gm, ["fuse_rope_cached_attention"], hf_config=tiny_config("llama"))
    assert info["fuse_rope_cached_attention"].matches == 2
    assert count(gm, ROPE) == 0 and count(gm, FUSED) == 2
    steps(model, unfused, gm, 256)


def test_runs_after_insert_kv_cache_and_recipes_enable_it():
    from autodeploy.recipe import load_recipe
    from autodeploy.transforms.pipeline import ordered_specs

    names = [s.name for s in ordered_specs()]
    assert names.index("fuse_rope_cached_attention") == names.index("insert_kv_cache") + 1
    for recipe in ("cpu", "h100", "h200", "a100"):
        assert load_recipe(recipe).transform_config("fuse_rope_cached_attention").enabled
