"""The scheduler alone (no model): policies, token budget, batch limit, chunked prefill,
preemption by recompute, cancellation and prefix-cache admission."""

import pytest

from autodeploy.runtime.kv_pool import KVPagePool
from autodeploy.runtime.request import Request, Status
from autodeploy.runtime.sampling import SamplingParams
from autodeploy.runtime.scheduler import Scheduler


def make(n_prompt, priority=0, arrival=0, start=1):
    r = Request(list(range(start, start + n_prompt)), SamplingParams(max_tokens=100), priority=priority)
    r.arrival = arrival
    return r


def scheduler(num_pages=64, page_size=4, max_batch_size=8, max_num_tokens=64, policy="fcfs", prefix=False):
    pool = KVPagePool(num_pages, page_size, enable_prefix_caching=prefix)
    return Scheduler(pool, max_batch_size, max_num_tokens, policy)


def run_step(s):
    """What the engine does after the forward: advance num_computed, append a token where a chunk completed."""
    out = s.schedule()
    for c in out.chunks:
        assert c.start == c.request.num_computed
        c.request.num_computed += c.num_tokens
        s.register_full_pages(c.request)
        if c.completes:
            c.request.token_ids.append(7)
    return out


def test_fcfs_admits_in_arrival_order_up_to_the_batch_limit():
    s = scheduler(max_batch_size=2)
    reqs = [make(3, arrival=i) for i in range(3)]
    for r in reversed(reqs):
        s.add(r)
    out = run_step(s)
    assert [c.request for c in out.chunks] == reqs[:2]
    assert reqs[2].status is Status.WAITING and s.waiting == [reqs[2]]


def test_priority_policy_orders_by_priority_then_arrival():
    s = scheduler(max_batch_size=2, policy="priority")
    low, high_late, high_early = make(3, priority=5, arrival=0), make(3, priority=1, arrival=2), make(3, priority=1, arrival=1)
    for r in (low, high_late, high_early):
        s.add(r)
    out = run_step(s)
    assert [c.request for c in out.chunks] == [high_early, high_late]


def test_unknown_policy_is_rejected():
    with pytest.raises(ValueError, match="policy"):
        scheduler(policy="random")


def test_token_budget_chunks_a_long_prompt():
    s = scheduler(max_num_tokens=8)
    r = make(21)
    s.add(r)
    sizes = []
    while r.num_output == 0:
        out = run_step(s)
        assert out.num_tokens <= 8
        sizes.append(out.chunks[0].num_tokens)
    assert sizes == [8, 8, 5]
    assert r.num_computed == 21 and len(r.pages) == 6  # ceil(21 / 4)


def test_decodes_go_first_and_prefills_come_first_in_the_step():
    s = scheduler(max_num_tokens=6)
    a = make(2, arrival=0)
    s.add(a)
    run_step(s)  # a's prompt done: a now decodes
    b = make(20, arrival=1)
    s.add(b)
    out = run_step(s)
    # a's decode is scheduled before b takes the rest of the budget; the step lists prefills first
    assert [(c.request, c.num_tokens) for c in out.chunks] == [(b, 5), (a, 1)]
    assert out.num_prefill == 1 and out.chunks[1].is_decode


def test_out_of_pages_preempts_the_last_request_and_it_recomputes_later():
    s = scheduler(num_pages=4, page_size=2, max_num_tokens=64)
    first, second = make(3, arrival=0), make(3, arrival=1, start=50)
    s.add(first)
    s.add(second)
    run_step(s)  # both prefilled: 2 pages each, pool full
    assert s.pool.num_free == 0
    run_step(s)  # decodes at position 3 fit in page 2 of each
    out = run_step(s)  # position 5 needs a third page: second goes
    assert out.preempted == [second] and second.status is Status.WAITING
    assert second.pages == [] and second.num_computed == 0 and second.num_preemptions == 1
    assert second.token_ids[3:] == [7, 7]  # its output survives the preemption
    assert [c.request for c in out.chunks] == [first]
    while first.num_output < 5:
        run_step(s)
    s.remove(first)  # finished: its pages come back
    out = run_step(s)
    assert [(c.request, c.start, c.num_tokens) for c in out.chunks] == [(second, 0, 5)]  # prompt + output recomputed


def test_a_preempting_step_admits_nothing():
    s = scheduler(num_pages=3, page_size=2, policy="priority")
    a, b = make(2, arrival=0), make(2, arrival=1, start=9)
    s.add(a)
    s.add(b)
    run_step(s)  # one page each, one left
    urgent = make(1, priority=-1, arrival=2, start=30)  # first in line, and b's freed page would hold it
    s.add(urgent)
    out = run_step(s)  # a's decode takes the last page, b is preempted
    assert out.preempted == [b]
    assert urgent.status is Status.WAITING and [c.request for c in out.chunks] == [a]
    out = run_step(s)
    assert urgent in [c.request for c in out.chunks]


def test_the_first_request_is_never_the_victim():
    s = scheduler(num_pages=5, page_size=1, max_num_tokens=64)
    reqs = [make(2, arrival=i, start=10 * i) for i in range(2)]
    for r in reqs:
        s.add(r)
    for _ in range(3):  # request 0 reaches 5 tokens: the whole pool, which it then holds alone
        out = run_step(s)
        assert reqs[0] not in out.preempted
    assert reqs[0].num_preemptions == 0 and reqs[1].num_preemptions >= 1


def test_remove_frees_pages_at_once():
    s = scheduler(num_pages=8, page_size=2)
    r = make(7)
    s.add(r)
    run_step(s)
    assert s.pool.num_used == 4
    s.remove(r)
    assert s.pool.num_free == 8 and not s.running and r.pages == []
    waiting = make(3)
    s.add(waiting)
    s.remove(waiting)
    assert not s.waiting


def test_prefix_hit_skips_the_cached_pages():
    s = scheduler(page_size=4, prefix=True)
    a = make(10)
    s.add(a)
    run_step(s)  # pages 0 and 1 full and registered
    b = make(10)  # the same 10 tokens
    s.add(b)
    out = run_step(s)
    chunk = next(c for c in out.chunks if c.request is b)
    assert (chunk.start, chunk.num_tokens) == (8, 2)
    assert b.pages[:2] == a.pages[:2] and b.pages[2] != a.pages[2]
    assert b.num_cached_tokens == 8 and s.pool.metrics().prefix_hits == 2


def test_a_full_prompt_hit_still_computes_its_last_token():
    s = scheduler(page_size=4, prefix=True)
    a = make(8)
    s.add(a)
    run_step(s)
    b = make(8)
    s.add(b)
    out = run_step(s)
    chunk = next(c for c in out.chunks if c.request is b)
    assert (chunk.start, chunk.num_tokens) == (4, 4)  # only the first page reused; the second holds the last token
