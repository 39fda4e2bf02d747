"""Benchmark workloads over a Runtime: fixed-length batches and a serving run with arrivals.

Requests are submitted through `rt.submit` and the engine is stepped here, so every token's time
is the host clock after the step that produced it (a step ends with its tokens on the host, so
the clock already waited for the device):

    TTFT   first token - submission          TPOT  (last token - first token) / (tokens - 1)
    tokens/s per sequence = 1 / TPOT          tokens/s total = all output tokens / wall time
"""

from __future__ import annotations

import math
import resource
import statistics
import time
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from autodeploy.runtime.sampling import SamplingParams


@dataclass
class RequestTiming:
    submitted: float
    first_token: float | None = None
    finished: float | None = None
    num_output: int = 0
    error: str | None = None

    @property
    def ttft(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.submitted

    @property
    def tpot(self) -> float | None:
        if self.first_token is None or self.finished is None or self.num_output < 2:
            return None
        return (self.finished - self.first_token) / (self.num_output - 1)


def random_prompts(n: int, length: int, vocab: int, seed: int = 0) -> list[list[int]]:
    """n prompts of `length` random token ids (the first 1000 ids avoided: special tokens live there)."""
    g = torch.Generator().manual_seed(seed)
    low = 1000 if vocab > 2000 else 1
    return torch.randint(low, vocab, (n, length), generator=g).tolist()


def poisson_arrivals(n: int, rate: float, seed: int = 0) -> list[float]:
    """Arrival times (s) of n requests at `rate` per second; rate inf: all at time 0."""
    if math.isinf(rate):
        return [0.0] * n
    g = torch.Generator().manual_seed(seed)
    gaps = torch.empty(n, dtype=torch.float64).exponential_(rate, generator=g)
    return torch.cumsum(gaps, 0).sub(gaps[0]).tolist()  # the first arrives at 0


def greedy_params(max_tokens: int) -> SamplingParams:
    # ignore_eos: every request produces exactly max_tokens (random weights hit EOS too)
    return SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)


def drive(rt, prompts: Sequence[Sequence[int]], max_tokens: int, arrivals: Sequence[float] | None = None) -> tuple[list[RequestTiming], float]:
    """Submit each prompt at its arrival time (all at once by default), step until all finish.

    Only the requests a step returns (those that got a token) are looked at after it, so the
    harness costs O(batch) per step, not O(all requests): 1,000 queued requests would otherwise
    add a millisecond of Python to every step."""
    n = len(prompts)
    arrivals = list(arrivals) if arrivals is not None else [0.0] * n
    timings: list[RequestTiming | None] = [None] * n
    index: dict[str, int] = {}  # request id -> prompt index, while unfinished
    live: dict[str, Any] = {}  # request id -> Request, while unfinished
    params = greedy_params(max_tokens)
    nxt = 0

    def observe(req, now: float) -> None:
        i = index.get(req.request_id)
        if i is None:
            return
        tm = timings[i]
        req.events.clear()  # nobody streams here; keep memory flat over long runs
        tm.num_output = req.num_output
        if tm.first_token is None and tm.num_output > 0:
            tm.first_token = now
        if req.finished:
            tm.finished, tm.error = now, req.error
            del index[req.request_id], live[req.request_id]

    t0 = time.perf_counter()
    while nxt < n or index:
        while nxt < n and arrivals[nxt] <= time.perf_counter() - t0:
            req = rt.submit(list(prompts[nxt]), params).request
            timings[nxt] = RequestTiming(submitted=time.perf_counter())
            index[req.request_id], live[req.request_id] = nxt, req
            observe(req, time.perf_counter())  # a request refused at submission ends here
            nxt += 1
        if not index:
            time.sleep(max(0.0, arrivals[nxt] - (time.perf_counter() - t0)))
            continue
        steps = rt.engine.num_progress
        stepped = rt.step()
        now = time.perf_counter()
        if rt.engine.num_progress == steps and rt.engine.has_unfinished:
            raise RuntimeError("the engine made no progress (scheduler stalled)")
        for req in stepped:
            observe(req, now)
        if not stepped and not rt.engine.has_unfinished:  # some ended without a token (errors): sweep
            for req in list(live.values()):
                observe(req, now)
            for rid in list(index):
                tm = timings[index.pop(rid)]
                del live[rid]
                tm.finished, tm.error = now, "ended without finishing"
    wall = time.perf_counter() - t0
    return [t for t in timings if t is not None], wall


def _ms(x: float | None) -> float | None:
    return None if x is None else x * 1e3


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, max(0, math.ceil(q / 100 * len(values)) - 1))]


def summarize(timings: list[RequestTiming], wall: float) -> dict[str, Any]:
    ok = [t for t in timings if t.error is None]
    ttfts = [t.ttft for t in ok if t.ttft is not None]
    tpots = [t.tpot for t in ok if t.tpot is not None]
    out_tokens = sum(t.num_output for t in ok)
    first = max((t.first_token for t in ok if t.first_token is not None), default=None)
    last = max((t.finished for t in ok if t.finished is not None), default=None)
    decode_tokens = sum(max(0, t.num_output - 1) for t in ok)
    return {
        "num_requests": len(timings),
        "completed": len(ok),
        "failed": len(timings) - len(ok),
        "wall_s": wall,
        "output_tokens": out_tokens,
        "ttft_ms": _ms(statistics.mean(ttfts)) if ttfts else None,
        "tpot_ms": _ms(statistics.mean(tpots)) if tpots else None,
        "ttft_ms_p50": _ms(_pct(ttfts, 50)),
        "ttft_ms_p99": _ms(_pct(ttfts, 99)),
        "tpot_ms_p50": _ms(_pct(tpots, 50)),
        "tpot_ms_p99": _ms(_pct(tpots, 99)),
        "tokens_per_s_per_seq": statistics.mean(1 / t for t in tpots if t > 0) if tpots else None,
        "tokens_per_s": out_tokens / wall if wall > 0 else None,
        "output_tokens_per_s": out_tokens / wall if wall > 0 else None,
        # decode phase only: after the last prefill's first token, until the last finish
        "decode_tokens_per_s": (decode_tokens / (last - first)) if first and last and last > first else None,
    }


class PeakMemory:
    """Peak device memory over a block: CUDA's allocator peak, or the process's peak RSS on the CPU."""

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self.gb: float | None = None
        self.kind = "cuda_allocated" if self.device.type == "cuda" else "host_rss"

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.gb = torch.cuda.max_memory_allocated(self.device) / 1e9
        else:  # ru_maxrss is in KiB on Linux: the process's high-water mark, not this block's alone
            self.gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def fixed_workload(rt, batch_size: int, input_len: int, output_len: int, vocab: int, seed: int = 0,
                   warmup: bool = True) -> dict[str, Any]:
    """b requests of input_len random tokens, all submitted at once, each producing output_len tokens."""
    prompts = random_prompts(batch_size, input_len, vocab, seed)
    if warmup:  # the same shapes, a few tokens: compiles, captures and allocator growth happen here
        drive(rt, prompts, min(4, output_len))
    with PeakMemory(rt.device) as mem:
        timings, wall = drive(rt, prompts, output_len)
    res = summarize(timings, wall)
    res.update(name=f"fixed b={batch_size} in={input_len} out={output_len}", kind="fixed", batch_size=batch_size,
               input_len=input_len, output_len=output_len, peak_memory_gb=mem.gb, memory_kind=mem.kind)
    return res


def serve_workload(rt, num_requests: int, rate: float, input_len: int, output_len: int, vocab: int,
                   seed: int = 0) -> dict[str, Any]:
    """N requests with Poisson arrivals at `rate`/s (inf: all at once)."""
    prompts = random_prompts(num_requests, input_len, vocab, seed + 1)
    arrivals = poisson_arrivals(num_requests, rate, seed)
    with PeakMemory(rt.device) as mem:
        timings, wall = drive(rt, prompts, output_len, arrivals)
    res = summarize(timings, wall)
    rate_s = "inf" if math.isinf(rate) else f"{rate:g}"
    res.update(name=f"serve n={num_requests} rate={rate_s} in={input_len} out={output_len}", kind="serve",
               rate=None if math.isinf(rate) else rate, input_len=input_len, output_len=output_len,
               peak_memory_gb=mem.gb, memory_kind=mem.kind)
    return res
