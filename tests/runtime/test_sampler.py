"""The batched sampler: greedy, temperature, top-k / top-p / min-p, penalties, min_tokens,
logprobs, and per-request seeds that make sampling independent of the batch around a request."""

import math

import pytest
import torch

from autodeploy.errors import RequestError
from autodeploy.runtime.request import Request
from autodeploy.runtime.sampler import Sampler, apply_penalties, filter_logits
from autodeploy.runtime.sampling import SamplingParams

V = 32


def req(seed=0, prompt=(1, 2, 3), outputs=(), stop_ids=(), **kw) -> Request:
    r = Request(list(prompt), SamplingParams(seed=seed, **kw))
    r.token_ids += list(outputs)
    r.generator = torch.Generator().manual_seed(seed)
    r.stop_ids = frozenset(stop_ids)
    return r


def logits_from_probs(probs):
    return torch.tensor(probs).log()[None]  # [1, V']


def draws(logits, n=2000, **kw):
    r = req(seed=123, **kw)
    sampler = Sampler()
    return [sampler(logits, [r]).token_ids[0] for _ in range(n)]


def test_greedy_rows_take_argmax_next_to_sampled_rows():
    logits = torch.randn(4, V)
    reqs = [req(), req(temperature=1.0), req(), req(temperature=0.5, top_k=3)]
    out = Sampler()(logits, reqs).token_ids
    assert out[0] == int(logits[0].argmax()) and out[2] == int(logits[2].argmax())
    assert out[3] in logits[3].topk(3).indices.tolist()


def test_sampler_does_not_modify_the_logits():
    logits = torch.randn(2, V)
    before = logits.clone()
    Sampler()(logits, [req(repetition_penalty=2.0), req(temperature=1.0, min_tokens=3, stop_ids=[0])])
    assert torch.equal(logits, before)
    # a processor edits its row of the sampler's copy; a batch without edits is read as it is (no copy)
    ban = req(logits_processors=[lambda out, row: row.masked_fill(torch.arange(V) == int(row.argmax()), -1e9)])
    assert Sampler()(logits, [req(), ban]).token_ids == [int(before[0].argmax()), int(before[1].topk(2).indices[1])]
    assert torch.equal(logits, before)


def test_temperature_sampling_follows_the_distribution():
    probs = [0.5, 0.3, 0.15, 0.05]
    got = draws(logits_from_probs(probs), n=4000, temperature=1.0)
    freq = [got.count(i) / len(got) for i in range(4)]
    # 4000 draws: standard error <= 0.008, so 0.03 is a ~4-sigma band
    assert all(abs(f - p) < 0.03 for f, p in zip(freq, probs)), freq


def test_low_temperature_concentrates_on_the_mode():
    got = draws(logits_from_probs([0.4, 0.35, 0.25]), n=500, temperature=0.05)
    assert got.count(0) / len(got) > 0.9


@pytest.mark.parametrize(
    "kw, support",
    [
        (dict(top_k=2), {0, 1}),
        (dict(top_k=1), {0}),
        (dict(top_p=0.75), {0, 1}),  # exclusive cumulative mass 0, .5, .8, .95
        (dict(top_p=0.4), {0}),  # the most likely token always stays
        (dict(min_p=0.25), {0, 1, 2}),  # p >= 0.25 * 0.5
        (dict(top_k=3, min_p=0.5), {0, 1}),
    ],
)
def test_filters_restrict_the_support(kw, support):
    got = set(draws(logits_from_probs([0.5, 0.3, 0.15, 0.05]), n=400, temperature=1.0, **kw))
    assert got == support


def reference_filter(logits, p):
    """One row, the filters applied one after the other on the full vocabulary."""
    x = logits / p.temperature
    if p.top_k:
        kth = x.topk(p.top_k).values[-1]
        x = x.masked_fill(x < kth, -math.inf)
    if p.top_p < 1:
        probs = x.softmax(-1)
        s, idx = probs.sort(descending=True)
        drop_sorted = s.cumsum(-1) - s > p.top_p
        x = x.masked_fill(torch.zeros_like(drop_sorted).scatter(0, idx, drop_sorted), -math.inf)
    if p.min_p:
        probs = x.softmax(-1)
        x = x.masked_fill(probs < p.min_p * probs.max(), -math.inf)
    return x


def test_batched_filters_match_row_by_row():
    torch.manual_seed(1)
    logits = torch.randn(5, V) * 3
    params = [
        SamplingParams(temperature=0.7, top_k=5),
        SamplingParams(temperature=1.3, top_p=0.6),
        SamplingParams(temperature=1.0, min_p=0.1),
        SamplingParams(temperature=0.9, top_k=8, top_p=0.8, min_p=0.05),
        SamplingParams(temperature=1.0),
    ]
    got = filter_logits(logits, params)
    for i, p in enumerate(params):
        torch.testing.assert_close(got[i], reference_filter(logits[i], p))


def test_repetition_presence_frequency_penalties():
    logits = torch.tensor([[2.0, -2.0, 1.0, 0.5, 3.0]])
    r = req(prompt=[0], outputs=[1, 1, 2], repetition_penalty=2.0, presence_penalty=0.5, frequency_penalty=0.25)
    got = apply_penalties(logits.clone(), [r])
    # repetition on prompt+output tokens {0,1,2}; presence/frequency on output counts {1: 2, 2: 1}
    expected = torch.tensor([[2.0 / 2, -2.0 * 2 - 0.5 - 2 * 0.25, 1.0 / 2 - 0.5 - 0.25, 0.5, 3.0]])
    torch.testing.assert_close(got, expected)


def test_penalty_state_follows_new_outputs():
    r = req(prompt=[0], outputs=[], frequency_penalty=1.0)
    logits = torch.zeros(1, 4)
    assert apply_penalties(logits.clone(), [r]).tolist() == [[0, 0, 0, 0]]
    r.token_ids += [3, 3]
    assert apply_penalties(logits.clone(), [r]).tolist() == [[0, 0, 0, -2]]
    r.token_ids += [2]
    assert apply_penalties(logits.clone(), [r]).tolist() == [[0, 0, -1, -2]]


def test_repetition_penalty_flips_greedy_choice():
    logits = torch.tensor([[3.0, 2.0, 0.0]])
    assert Sampler()(logits, [req(prompt=[0], repetition_penalty=2.0)]).token_ids == [1]


def test_min_tokens_masks_stop_tokens_until_reached():
    logits = torch.tensor([[5.0, 1.0, 0.0]])  # the stop token 0 is the mode
    early = req(outputs=[], stop_ids=[0], min_tokens=2)
    assert Sampler()(logits, [early]).token_ids == [1]
    late = req(outputs=[1, 1], stop_ids=[0], min_tokens=2)
    assert Sampler()(logits, [late]).token_ids == [0]


def test_logprobs_of_chosen_tokens():
    logits = torch.randn(2, V)
    reqs = [req(logprobs=True), req(logprobs=True, temperature=0.8, top_k=4), req(logprobs=False)]
    logits = torch.cat([logits, torch.randn(1, V)])
    res = Sampler()(logits, reqs)
    t0, t1 = res.token_ids[:2]
    assert res.logprobs[0] == pytest.approx(float(logits[0].log_softmax(-1)[t0]), abs=1e-6)
    assert res.logprobs[1] == pytest.approx(float(reference_filter(logits[1], reqs[1].sampling).log_softmax(-1)[t1]), abs=1e-5)
    assert res.logprobs[2] is None


def sample_steps(seeds, steps, others=0):
    """Tokens of each seeded request over `steps` steps, with `others` unseeded neighbours around them.

    A request's logits depend only on (step, its seed), so any difference comes from the batch.
    """
    table = torch.randn(steps, 64, V, generator=torch.Generator().manual_seed(7)) * 2
    reqs = [req(seed=s, temperature=1.0, top_p=0.9) for s in seeds]
    out = {s: [] for s in seeds}
    sampler = Sampler()
    half = others // 2
    for step in range(steps):
        neighbours = [req(seed=1000 + 10 * step + j, temperature=0.7) for j in range(others)]
        batch = neighbours[:half] + reqs + neighbours[half:]
        logits = torch.stack([table[step, 63 - j] for j in range(half)] + [table[step, s] for s in seeds]
                             + [table[step, 63 - j] for j in range(half, others)])
        res = sampler(logits, batch)
        for i, s in enumerate(seeds):
            out[s].append(res.token_ids[half + i])
    return out


def test_seeded_sampling_is_reproducible_across_runs_and_batches():
    alone = {s: sample_steps([s], 12)[s] for s in (3, 5, 11)}
    together = sample_steps([3, 5, 11], 12)
    crowded = sample_steps([11, 3, 5], 12, others=5)
    again = sample_steps([3, 5, 11], 12)
    assert together == alone and again == alone
    assert {s: crowded[s] for s in alone} == alone
    assert alone[3] != alone[5]  # different seeds, different draws


def test_invalid_sampling_values_raise_a_request_error():
    with pytest.raises(RequestError, match="top_p"):
        SamplingParams(top_p=0.0)
    with pytest.raises(RequestError, match="temperature"):
        SamplingParams(temperature=float("nan"))
    p = SamplingParams()
    p.top_k = -1  # fields stay mutable: the engine checks again at submit
    assert "top_k" in p.problem()


@pytest.mark.parametrize("vocab", [128256, 49152, 1024, 1000, 50257])
def test_argmax_rows_is_argmax(vocab):
    from autodeploy.runtime.sampler import argmax_rows

    g = torch.Generator().manual_seed(vocab)
    scores = torch.randn(6, vocab, generator=g)
    scores[1, [5, vocab // 2, vocab - 1]] = 9.0  # ties across chunks: the first index wins
    scores[2, -3:] = 9.0  # ties inside the last chunk
    scores[3] = float("-inf")  # a fully masked row
    scores[4, vocab // 3] = float("nan")  # NaN propagates as the maximum, as in argmax
    scores[5] = 0.0  # every entry tied
    assert torch.equal(argmax_rows(scores), scores.argmax(-1))
