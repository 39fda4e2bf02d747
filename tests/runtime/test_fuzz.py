"""Random submit / cancel / step sequences over a small pool: every request ends exactly once,
page references always match the requests holding them, greedy outputs stay exact, and once
all requests have ended every page is free (cached prefix pages count: they are evictable)."""

import random
from collections import Counter

import pytest

from autodeploy.runtime.engine import Engine, EngineConfig
from autodeploy.runtime.request import Request
from autodeploy.runtime.sampling import SamplingParams
from tests.runtime.paged_history_model import PagedHistoryModel, reference_greedy

VOCAB = 48
REASONS = {"stop", "length", "cancelled", "error"}


def random_request(rng: random.Random, prefixes: list[list[int]]) -> Request:
    base = rng.choice(prefixes)[: rng.randint(0, 12)]
    ids = base + [rng.randrange(1, VOCAB) for _ in range(rng.randint(0 if base else 1, 14))]
    kind = rng.random()
    if kind < 0.05:
        ids = [1] * 70  # longer than max_seq_len: fails alone
    params = SamplingParams(max_tokens=rng.randint(1, 12), stop_token_ids=[rng.randrange(1, VOCAB)])
    if kind > 0.6:
        params = SamplingParams(max_tokens=rng.randint(1, 12), temperature=1.0, top_k=rng.choice([0, 5]),
                                seed=rng.randrange(1000), repetition_penalty=rng.choice([1.0, 1.3]))
    elif 0.05 <= kind < 0.1:
        params.max_tokens = 200  # can never fit the pool
    return Request(ids, params, priority=rng.randint(0, 3))


def check_refs(e: Engine) -> None:
    e.pool.check_invariants()
    held = Counter(p for r in e.requests.values() for p in r.pages)
    for page in range(e.pool.num_pages):
        assert e.pool.refs(page) == held[page], f"page {page}"


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("prefix_caching", [False, True])
def test_fuzz_submit_cancel_step(seed, prefix_caching):
    rng = random.Random(seed)
    cfg = EngineConfig(max_batch_size=rng.choice([2, 4, 8]), max_num_tokens=rng.choice([5, 16, 64]),
                       max_seq_len=64, policy=rng.choice(["fcfs", "priority"]), enable_prefix_caching=prefix_caching)
    e = Engine(PagedHistoryModel(num_pages=rng.choice([10, 16]), page_size=rng.choice([2, 4]), vocab=VOCAB), cfg)
    prefixes = [[rng.randrange(1, VOCAB) for _ in range(12)] for _ in range(3)]
    reqs: list[Request] = []
    for _ in range(300):
        op = rng.random()
        if op < 0.3:
            reqs.append(e.add_request(random_request(rng, prefixes)))
        elif op < 0.4 and reqs:
            e.abort(rng.choice(reqs).request_id)
        else:
            e.step()
        check_refs(e)
    while e.has_unfinished:
        e.step()
        check_refs(e)

    for r in reqs:
        ends = [d for d in r.events if d.finished]
        assert len(ends) == 1 and ends[0] is r.events[-1], r
        assert r.finished and r.finish_reason in REASONS
        assert -1 not in r.token_ids, f"{r}: a placeholder of the overlapped engine leaked into the output"
        assert (r.finish_reason == "error") == (r.error is not None)
        if r.sampling.greedy and r.finish_reason in ("stop", "length"):
            limit = min(r.sampling.max_tokens, cfg.max_seq_len - r.num_prompt)
            assert r.output_token_ids == reference_greedy(r.prompt_token_ids, limit, VOCAB, r.sampling.stop_token_ids), r
    reasons = Counter(r.finish_reason for r in reqs)
    assert reasons["cancelled"] and reasons["error"] and reasons["length"]
    m = e.metrics()
    assert m.kv_pages_free == m.kv_pages_total and m.kv_pages_used == 0
    assert m.num_waiting == m.num_running == 0
    if prefix_caching:
        assert m.prefix_cache_hits > 0
