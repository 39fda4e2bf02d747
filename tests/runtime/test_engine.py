"""The engine over a paged test double: packed steps produce each request's own greedy tokens,
stops and limits end requests, bad requests fail alone, and every request ends exactly once."""

import re

import pytest

from autodeploy.runtime.engine import Engine, EngineConfig
from autodeploy.runtime.request import Request
from autodeploy.runtime.sampling import SamplingParams
from tests.runtime.paged_history_model import CharTokenizer, PagedHistoryModel, reference_greedy

VOCAB = 64


def engine(num_pages=32, page_size=4, tokenizer=None, eos=(), **cfg):
    cfg = dict(dict(max_batch_size=8, max_num_tokens=64, max_seq_len=128), **cfg)
    return Engine(PagedHistoryModel(num_pages, page_size, VOCAB), EngineConfig(**cfg), tokenizer=tokenizer,
                  eos_token_ids=eos, vocab_size=VOCAB)


def run(e, reqs):
    for r in reqs:
        e.add_request(r)
    for _ in range(10_000):
        if not e.has_unfinished:
            break
        e.step()
    assert not e.has_unfinished
    return reqs


def prompt(n, start=1):
    return [(start + 7 * i) % (VOCAB - 1) + 1 for i in range(n)]


def finished_events(r):
    return [d for d in r.events if d.finished]


def test_packed_greedy_equals_each_request_alone():
    e = engine(max_num_tokens=12)  # forces chunked prefill of the long prompts
    reqs = run(e, [Request(prompt(n, n), SamplingParams(max_tokens=10)) for n in (1, 5, 17, 30, 9)])
    for r in reqs:
        assert r.output_token_ids == reference_greedy(r.prompt_token_ids, 10, VOCAB)
        assert r.finish_reason == "length" and len(finished_events(r)) == 1
    steps = e.model.steps
    assert any(s.num_prefill and s.num_decode for s in steps)  # prefills and decodes in one forward
    assert max(s.num_tokens for s in steps) <= 12
    assert e.pool.num_free == e.pool.num_pages


def test_preemption_under_a_tight_pool_changes_no_token():
    e = engine(num_pages=12, page_size=2)
    reqs = run(e, [Request(prompt(n, n), SamplingParams(max_tokens=12)) for n in (6, 7, 8, 9)])
    assert e.metrics().num_preemptions > 0
    for r in reqs:
        assert r.output_token_ids == reference_greedy(r.prompt_token_ids, 12, VOCAB)


def test_stop_token_and_ignore_eos():
    ref = reference_greedy(prompt(4), 40, VOCAB)
    stop = ref[5]
    first = ref.index(stop)
    r = run(engine(), [Request(prompt(4), SamplingParams(max_tokens=40, stop_token_ids=[stop]))])[0]
    assert r.output_token_ids == ref[: first + 1] and r.finish_reason == "stop"
    eos = run(engine(eos=[stop]), [Request(prompt(4), SamplingParams(max_tokens=40))])[0]
    assert eos.output_token_ids == r.output_token_ids and eos.finish_reason == "stop"
    ignored = run(engine(eos=[stop]), [Request(prompt(4), SamplingParams(max_tokens=40, ignore_eos=True))])[0]
    assert ignored.output_token_ids == ref and ignored.finish_reason == "length"


def test_min_tokens_holds_off_the_stop_token():
    ref = reference_greedy(prompt(4), 8, VOCAB)
    r = run(engine(eos=[ref[0]]), [Request(prompt(4), SamplingParams(max_tokens=8, min_tokens=3))])[0]
    assert r.num_output >= 3 and r.output_token_ids[0] != ref[0]


def test_max_seq_len_ends_with_length():
    r = run(engine(max_seq_len=12), [Request(prompt(9), SamplingParams(max_tokens=50))])[0]
    assert r.finish_reason == "length" and len(r.token_ids) == 12


def test_stop_string_cuts_the_text_and_the_stream_never_shows_it():
    tok = CharTokenizer()
    ref = reference_greedy(prompt(3), 30, VOCAB, stop_ids={tok.eos_token_id})
    full = tok.decode(ref)
    stop = full[6:9]
    cut = full.index(stop)
    r = run(engine(tokenizer=tok, eos=[tok.eos_token_id]), [Request(prompt(3), SamplingParams(max_tokens=30, stop=[stop]))])[0]
    assert r.finish_reason == "stop" and r.text == full[:cut]
    assert tok.decode(r.output_token_ids).endswith(stop)  # generation stopped right as the string completed
    streamed = "".join(d.text for d in r.events)
    assert streamed == r.text
    assert sum(len(d.token_ids) for d in r.events) == r.num_output


def test_streamed_text_without_stop_strings_is_the_decoded_output():
    tok = CharTokenizer()
    r = run(engine(tokenizer=tok), [Request(prompt(5), SamplingParams(max_tokens=12, logprobs=True))])[0]
    assert "".join(d.text for d in r.events) == r.text == tok.decode(r.output_token_ids)
    assert len(r.logprobs) == 12 and all(lp <= 0 for lp in r.logprobs)
    assert [t for d in r.events for t in d.token_ids] == r.output_token_ids


@pytest.mark.parametrize(
    "bad, reason",
    [
        (Request(prompt(40), SamplingParams(max_tokens=4)), "does not fit max_seq_len 32"),
        (Request(prompt(10), SamplingParams(max_tokens=20)), "needs 8 KV pages .* the pool has 6"),
        (Request([], SamplingParams()), "empty prompt"),
        (Request([1, VOCAB + 3], SamplingParams()), "outside the vocabulary"),
    ],
)
def test_a_bad_request_fails_alone(bad, reason):
    e = engine(num_pages=6, page_size=4, max_seq_len=32)
    good = [Request(prompt(5, i), SamplingParams(max_tokens=6)) for i in range(3)]
    run(e, [good[0], bad] + good[1:])
    assert bad.finish_reason == "error"
    assert re.search(reason, bad.error), bad.error
    assert len(finished_events(bad)) == 1 and finished_events(bad)[0].error == bad.error
    for r in good:
        assert r.finish_reason == "length" and r.output_token_ids == reference_greedy(r.prompt_token_ids, 6, VOCAB)


def test_invalid_sampling_fails_alone():
    e = engine()
    bad = SamplingParams(max_tokens=4)
    bad.top_p = 1.5
    reqs = run(e, [Request(prompt(3), SamplingParams(max_tokens=4)), Request(prompt(3), bad)])
    assert reqs[0].finish_reason == "length"
    assert reqs[1].finish_reason == "error" and "top_p" in reqs[1].error


def test_duplicate_request_id_fails_the_newcomer_only():
    e = engine()
    a = e.add_request(Request(prompt(3), SamplingParams(max_tokens=3), request_id="x"))
    b = e.add_request(Request(prompt(4), SamplingParams(max_tokens=3), request_id="x"))
    assert b.finish_reason == "error" and "already in flight" in b.error
    run(e, [])
    assert a.finish_reason == "length"


def test_abort_frees_pages_at_once_and_ends_once():
    e = engine()
    r = e.add_request(Request(prompt(9), SamplingParams(max_tokens=20)))
    other = e.add_request(Request(prompt(5), SamplingParams(max_tokens=5)))
    e.step()
    e.step()
    assert e.pool.num_used == len(r.pages) + len(other.pages) and r.pages
    assert e.abort(r.request_id)
    assert e.pool.num_used == len(other.pages)
    assert r.pages == [] and r.finish_reason == "cancelled" and len(finished_events(r)) == 1
    assert not e.abort(r.request_id)
    run(e, [])
    assert other.finish_reason == "length" and len(finished_events(other)) == 1
    assert e.metrics().finished == {"cancelled": 1, "length": 1}


def test_resubmitting_the_same_request_object_is_refused():
    e = engine()
    r = e.add_request(Request(prompt(3), SamplingParams(max_tokens=2)))
    with pytest.raises(RuntimeError, match="already submitted"):
        e.add_request(r)


def test_metrics_count_queue_and_tokens():
    e = engine(max_batch_size=1, overlap=False)  # sampled tokens are read in the step that sampled them
    for i in range(3):
        e.add_request(Request(prompt(4, i), SamplingParams(max_tokens=2)))
    e.step()
    m = e.metrics()
    assert (m.num_running, m.num_waiting, m.num_tokens_computed, m.num_tokens_generated) == (1, 2, 4, 1)
    assert m.kv_pages_used == 1 and m.kv_pages_free == 31


def test_seeded_sampling_reproducible_across_runs_and_batches():
    def sampled(seed):
        return SamplingParams(max_tokens=16, temperature=1.0, top_p=0.9, seed=seed)

    def tokens_of(target_seed, neighbours, **kw):
        e = engine(**kw)
        others = [Request(prompt(n, n), sampled(100 + n)) for n in neighbours]
        target = Request(prompt(6), sampled(target_seed))
        run(e, others + [target])  # last in line: the first to be preempted
        return target.output_token_ids, target.num_preemptions

    alone, _ = tokens_of(7, [])
    assert tokens_of(7, [])[0] == alone  # a second run
    assert tokens_of(7, [3, 12, 5, 20])[0] == alone  # other requests in the same steps
    crowded, preemptions = tokens_of(7, [5, 8, 7], num_pages=14, page_size=2, max_num_tokens=8)
    assert crowded == alone and preemptions > 0  # preempted and recomputed: nothing drawn twice
    assert tokens_of(8, [])[0] != alone


def test_overlap_reads_each_step_one_step_later():
    """With overlap a step's token is read by the next step (or flush), never lost or doubled."""
    e = engine(max_batch_size=1)
    req = Request(prompt(4, 0), SamplingParams(max_tokens=3))
    e.add_request(req)
    e.step()  # prefill sampled on the device: the output holds a placeholder, nothing is read yet
    assert e.metrics().num_tokens_generated == 0 and req.token_ids[-1] == -1
    e.step()  # decode launched with that token from the device; the prefill's token read
    assert e.metrics().num_tokens_generated == 1 and req.token_ids[-2] != -1
    while e.has_unfinished:
        e.step()
    assert req.num_output == 3 and -1 not in req.token_ids and req.finish_reason == "length"
    sync = engine(max_batch_size=1, overlap=False)
    twin = Request(prompt(4, 0), SamplingParams(max_tokens=3))
    run(sync, [twin])
    assert twin.output_token_ids == req.output_token_ids
