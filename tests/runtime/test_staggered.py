"""Staggered arrivals: 64 requests of random lengths join over time a pool small enough to force
chunked prefill and preemption, and each produces exactly the tokens it produces alone.

Three paged models: the history double (any paging mistake changes its tokens), a CachedModel
over a one-layer graph with paged attention, and a tiny Llama through the whole pipeline.
"""

import functools
import random
import tempfile

import pytest
import torch

import autodeploy
from autodeploy.runtime.cached_model import CachedModel
from autodeploy.runtime.engine import Engine, EngineConfig
from autodeploy.runtime.request import Request
from autodeploy.runtime.sampling import SamplingParams
from tests.helpers.tiny_models import save_tiny
from tests.runtime.paged_history_model import PagedHistoryModel
from tests.runtime.toy_cached_graph import toy_cached_model

VOCAB, PAGES, PAGE_SIZE = 64, 24, 4  # 96 KV slots for up to 8 running requests of up to ~60 tokens
CFG = dict(max_batch_size=8, max_num_tokens=16, max_seq_len=64)


@functools.lru_cache(maxsize=1)
def tiny_llama_graph():
    """The cache-inserted graph of a tiny Llama (vocabulary 256), exported once for all engines."""
    with tempfile.TemporaryDirectory() as d:
        save_tiny("llama", d)
        rt = autodeploy.optimize(d, "cpu", kv_num_pages=PAGES, kv_page_size=PAGE_SIZE)
    assert isinstance(rt.model, CachedModel)
    return rt.graph_module


MODELS = {
    "history_double": lambda: PagedHistoryModel(PAGES, PAGE_SIZE, VOCAB),
    "toy_cached_graph": lambda: toy_cached_model(PAGES, PAGE_SIZE),
    "tiny_llama": lambda: CachedModel(tiny_llama_graph(), PAGES, PAGE_SIZE),  # fresh caches, shared weights
}


def requests(seed: int, n: int = 64) -> list[tuple[list[int], SamplingParams]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        prompt = [rng.randrange(1, VOCAB) for _ in range(rng.randint(1, 40))]
        if i % 3 == 2:
            params = SamplingParams(max_tokens=rng.randint(1, 20), temperature=0.9, top_p=0.95, seed=1000 + i)
        else:
            params = SamplingParams(max_tokens=rng.randint(1, 20))
        out.append((prompt, params))
    return out


def alone(make_model, prompt, params) -> list[int]:
    e = Engine(make_model(), EngineConfig(**CFG))
    r = e.add_request(Request(prompt, params))
    while e.has_unfinished:
        e.step()
    assert r.num_preemptions == 0
    return r.output_token_ids


@pytest.mark.parametrize("model", list(MODELS))
def test_staggered_arrivals_match_each_request_alone(model):
    make_model = MODELS[model]
    todo = requests(seed=0)
    expected = [alone(make_model, p, s) for p, s in todo]

    rng = random.Random(1)
    e = Engine(make_model(), EngineConfig(**CFG))
    live, pending = [], list(todo)
    while pending or e.has_unfinished:
        for _ in range(min(rng.choice([0, 0, 1, 2, 3]), len(pending))):  # arrivals between steps
            p, s = pending.pop(0)
            live.append(e.add_request(Request(p, s)))
        e.step()

    for r, exp in zip(live, expected):
        assert r.finish_reason == "length" and r.output_token_ids == exp, r
    m = e.metrics()
    assert m.num_preemptions > 0, "the pool was meant to force preemption"
    assert sum(r.num_preemptions for r in live) == m.num_preemptions
    chunked = [r for r in live if r.num_prompt > CFG["max_num_tokens"]]
    assert chunked  # prompts longer than the step budget went in chunks
    assert m.kv_pages_free == m.kv_pages_total
