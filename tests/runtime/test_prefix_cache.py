"""Prefix caching: a second request sharing a 256-token prefix reuses its KV pages (the metrics
show the hits) and its output is unchanged; shared pages are ref-counted and never written."""

import pytest

from autodeploy.runtime.engine import Engine, EngineConfig
from autodeploy.runtime.request import Request
from autodeploy.runtime.sampling import SamplingParams
from tests.runtime.paged_history_model import PagedHistoryModel
from tests.runtime.toy_cached_graph import toy_cached_model

VOCAB, PAGE_SIZE, PAGES = 64, 16, 64
PREFIX = [(11 * i) % (VOCAB - 1) + 1 for i in range(256)]  # 16 full pages
A = PREFIX + [5, 9, 13, 2, 7]
B = PREFIX + [3, 3, 8]

MODELS = {
    "history_double": lambda: PagedHistoryModel(PAGES, PAGE_SIZE, VOCAB),
    "toy_cached_graph": lambda: toy_cached_model(PAGES, PAGE_SIZE),
}


def engine(model: str, prefix_caching: bool) -> Engine:
    cfg = EngineConfig(max_batch_size=4, max_num_tokens=512, max_seq_len=512, enable_prefix_caching=prefix_caching)
    return Engine(MODELS[model](), cfg)


def finish(e: Engine) -> None:
    while e.has_unfinished:
        e.step()


def outputs_without_cache(model):
    out = []
    for prompt in (A, B):
        e = engine(model, False)
        r = e.add_request(Request(prompt, SamplingParams(max_tokens=12)))
        finish(e)
        out.append(r.output_token_ids)
    return out


@pytest.mark.parametrize("model", list(MODELS))
def test_second_request_reuses_the_prefix_after_the_first_finished(model):
    expected = outputs_without_cache(model)
    e = engine(model, True)
    a = e.add_request(Request(A, SamplingParams(max_tokens=12)))
    finish(e)
    computed = e.metrics().num_tokens_computed
    b = e.add_request(Request(B, SamplingParams(max_tokens=12)))
    finish(e)
    m = e.metrics()
    assert b.num_cached_tokens == 256 and m.prefix_cache_hits == 16
    assert m.num_tokens_computed - computed == len(B) - 256 + 11  # only the suffix, then 11 decodes
    assert [a.output_token_ids, b.output_token_ids] == expected
    assert m.kv_pages_free == m.kv_pages_total and m.kv_pages_cached > 16


@pytest.mark.parametrize("model", list(MODELS))
def test_running_requests_share_prefix_pages(model):
    expected = outputs_without_cache(model)
    e = engine(model, True)
    a = e.add_request(Request(A, SamplingParams(max_tokens=12)))
    e.step()  # a's prompt is in the pool
    b = e.add_request(Request(B, SamplingParams(max_tokens=12)))
    e.step()
    shared = a.pages[:16]
    assert b.pages[:16] == shared and all(e.pool.refs(p) == 2 for p in shared)
    assert not set(a.pages[16:]) & set(b.pages[16:])
    finish(e)
    assert [a.output_token_ids, b.output_token_ids] == expected
    assert e.metrics().prefix_cache_hits == 16


def test_no_reuse_with_prefix_caching_off():
    e = engine("history_double", False)
    e.add_request(Request(A, SamplingParams(max_tokens=2)))
    finish(e)
    b = e.add_request(Request(B, SamplingParams(max_tokens=2)))
    finish(e)
    m = e.metrics()
    assert b.num_cached_tokens == 0 and m.prefix_cache_hits == 0 and m.kv_pages_cached == 0


def test_a_different_first_page_shares_nothing():
    e = engine("history_double", True)
    e.add_request(Request(A, SamplingParams(max_tokens=2)))
    finish(e)
    c = e.add_request(Request([A[0] + 1] + A[1:], SamplingParams(max_tokens=2)))  # one token differs in page 0
    finish(e)
    assert c.num_cached_tokens == 0 and e.metrics().prefix_cache_hits == 0


def test_cached_pages_are_evicted_when_the_pool_needs_them():
    cfg = EngineConfig(max_batch_size=2, max_num_tokens=512, max_seq_len=512, enable_prefix_caching=True)
    e = Engine(PagedHistoryModel(20, PAGE_SIZE, VOCAB), cfg)
    e.add_request(Request(A, SamplingParams(max_tokens=2)))
    finish(e)
    assert e.metrics().kv_pages_cached == 16
    other = [(7 * i) % (VOCAB - 1) + 1 for i in range(300)]  # 19 pages: most cached ones must go
    r = e.add_request(Request(other, SamplingParams(max_tokens=2)))
    finish(e)
    assert r.finish_reason == "length" and e.metrics().prefix_cache_evictions > 0
    again = e.add_request(Request(A, SamplingParams(max_tokens=2)))
    finish(e)
    assert again.num_cached_tokens < 256  # its prefix was (partly) evicted, and it still ran
    assert again.finish_reason == "length"


def test_recipe_flag_turns_prefix_caching_on_through_optimize(tmp_path):
    import autodeploy
    from autodeploy.runtime.cached_model import CachedModel
    from tests.helpers.tiny_models import save_tiny

    save_tiny("llama", tmp_path)
    params = SamplingParams(max_tokens=12, ignore_eos=True)
    rt = autodeploy.optimize(str(tmp_path), "cpu", max_seq_len=512, kv_num_pages=64, kv_page_size=PAGE_SIZE,
                             enable_prefix_caching=True)
    assert isinstance(rt.model, CachedModel)
    first = rt.generate([A], params)[0]
    second = rt.generate([B], params)[0]
    m = rt.metrics()
    assert second.num_cached_tokens == 256 and m["prefix_cache_hits"] == 16
    rt_off = autodeploy.optimize(str(tmp_path), "cpu", max_seq_len=512, kv_num_pages=64, kv_page_size=PAGE_SIZE)
    assert [o.token_ids for o in rt_off.generate([A, B], params)] == [first.token_ids, second.token_ids]
    assert rt_off.metrics()["prefix_cache_hits"] == 0
