"""The engine: one `step()` = schedule, one packed forward, sample, append, finish.

    scheduler.schedule() ──▶ SequenceInfo.build(prefill chunks…, decodes…) ──▶ model.forward(info)
        ──▶ logits [b, V] ──▶ sampler (rows whose chunk reached the end) ──▶ append / stop checks
        ──▶ StreamDelta events on each request; finished requests leave and free their pages

The model is anything with `forward(info: SequenceInfo) -> logits [b, V]` (last token of each
sequence), `num_pages` and `page_size`: the CachedModel over the cache-inserted graph, or a test
double. Every request ends exactly once — finished ("stop" / "length"), "cancelled", or "error"
with a one-line reason — and a request that fails never stops the others.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Protocol

import torch

from autodeploy.runtime.kv_pool import KVPagePool
from autodeploy.runtime.outputs import Detokenizer, StreamDelta
from autodeploy.runtime.request import Request, Status
from autodeploy.runtime.sampler import Sampler
from autodeploy.runtime.scheduler import Policy, Scheduler, SchedulerOutput
from autodeploy.runtime.sequence_info import SequenceInfo

log = logging.getLogger(__name__)


class PagedModel(Protocol):
    num_pages: int
    page_size: int

    def forward(self, info: SequenceInfo) -> torch.Tensor: ...


@dataclass
class EngineConfig:
    max_batch_size: int = 8
    max_num_tokens: int = 2048
    max_seq_len: int = 2048
    policy: Policy = "fcfs"
    enable_prefix_caching: bool = False
    # Launch step N+1 before reading step N's tokens (they reach N+1 on the device), so host
    # work — scheduling, metadata, detokenization, stop checks — hides behind the GPU's step.
    overlap: bool = True


@dataclass
class EngineMetrics:
    kv_pages_total: int
    kv_pages_used: int
    kv_pages_free: int  # includes cached pages, which are evictable
    kv_pages_cached: int
    kv_usage: float
    prefix_cache_queries: int  # full prompt pages looked up
    prefix_cache_hits: int  # of those, reused
    prefix_cache_evictions: int  # cached pages reclaimed for new allocations
    num_waiting: int  # the queue
    num_running: int
    num_preemptions: int
    num_steps: int
    num_tokens_computed: int  # prompt and recomputed tokens through the model
    num_tokens_generated: int
    finished: dict[str, int] = field(default_factory=dict)  # by finish reason

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Engine:
    def __init__(self, model: PagedModel, config: EngineConfig | None = None, *, tokenizer: Any = None,
                 eos_token_ids: Iterable[int] = (), vocab_size: int | None = None,
                 device: torch.device | str = "cpu"):
        self.model = model
        self.config = cfg = config or EngineConfig()
        self.tokenizer = tokenizer
        self.eos_token_ids = frozenset(int(t) for t in eos_token_ids)
        self.vocab_size = vocab_size
        self.device = torch.device(device)
        self.pool = KVPagePool(model.num_pages, model.page_size, cfg.enable_prefix_caching)
        self.scheduler = Scheduler(self.pool, cfg.max_batch_size, cfg.max_num_tokens, cfg.policy)
        self.sampler = Sampler()
        self.requests: dict[str, Request] = {}  # unfinished, by id
        self._arrivals = 0
        self.num_steps = 0
        self.num_tokens_computed = 0
        self.num_tokens_generated = 0
        self.finished = Counter()
        # overlap needs a model that takes next-step input ids from the device (token_source)
        self.overlap = cfg.overlap and getattr(model, "accepts_token_source", False)
        self._inflight: _Inflight | None = None  # sampled on the device, not yet read
        self.num_progress = 0  # forwards run + steps read: a step that changes neither stalled

    # ---- requests ------------------------------------------------------------------------------
    def add_request(self, req: Request, problem: str | None = None) -> Request:
        """Queue a request, or fail it at once (its final event says why) if it can never run.

        `problem`: a reason found before the engine (e.g. the prompt did not tokenize) to fail it with.
        """
        if req.detok is not None:  # set below: the request went through here before
            raise RuntimeError(f"request {req.request_id} was already submitted")
        req.arrival = self._arrivals
        self._arrivals += 1
        req.detok = Detokenizer(self.tokenizer)
        req.logprobs = [] if req.sampling.logprobs else None
        problem = problem or self._problem(req)
        if problem is not None:
            self._finish(req, "error", problem)
            return req
        p = req.sampling
        req.stop_ids = frozenset(p.stop_token_ids) | (frozenset() if p.ignore_eos else self.eos_token_ids)
        seed = p.seed if p.seed is not None else int(torch.randint(0, 2**62, ()).item())
        req.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.requests[req.request_id] = req
        self.scheduler.add(req)
        return req

    def _problem(self, req: Request) -> str | None:
        msg = req.sampling.problem()
        if msg is not None:
            return f"invalid sampling parameter: {msg}"
        n, cfg = req.num_prompt, self.config
        if n == 0:
            return "empty prompt"
        if self.vocab_size is not None:
            bad = next((t for t in req.prompt_token_ids if not 0 <= t < self.vocab_size), None)
            if bad is not None:
                return f"token id {bad} is outside the vocabulary (size {self.vocab_size})"
        if n >= cfg.max_seq_len:
            return f"prompt of {n} tokens does not fit max_seq_len {cfg.max_seq_len}"
        # the last token is sampled, never fed back, so the KV holds at most total - 1 tokens
        kv_tokens = min(n + req.sampling.max_tokens, cfg.max_seq_len) - 1
        if self.pool.pages_for(kv_tokens) > self.pool.num_pages:
            return (f"request needs {self.pool.pages_for(kv_tokens)} KV pages ({n} prompt + "
                    f"{req.sampling.max_tokens} new tokens) but the pool has {self.pool.num_pages}")
        if req.request_id in self.requests:
            return f"request id {req.request_id!r} is already in flight"
        return None

    def abort(self, request_id: str) -> bool:
        """Cancel an unfinished request: its pages are freed now; False if it already ended."""
        req = self.requests.get(request_id)
        if req is None:
            return False
        self._finish(req, "cancelled")
        return True

    def _finish(self, req: Request, reason: str, error: str | None = None, flush: bool = True) -> None:
        if req.finished:
            raise RuntimeError(f"request {req.request_id} finished twice")
        self.scheduler.remove(req)
        if self.requests.get(req.request_id) is req:
            del self.requests[req.request_id]
        req.status = Status.FINISHED
        req.finish_reason, req.error = reason, error
        while req.token_ids and req.token_ids[-1] == PLACEHOLDER:  # cancelled with a token in flight
            req.token_ids.pop()
        if flush:  # a partial character left at the end; not after a stop string cut the text
            req.text += req.detok.flush()
        self.finished[reason] += 1
        self._emit(req, [], [])

    def _emit(self, req: Request, tokens: list[int], logprobs: list[float]) -> None:
        # with stop strings, hold back text that may turn out to be the start of one
        hold = 0 if req.finished or not req.sampling.stop else max(map(len, req.sampling.stop)) - 1
        end = max(req.num_text_sent, len(req.text) - hold)
        text = req.text[req.num_text_sent : end]
        req.num_text_sent = end
        if not (tokens or text or req.finished):
            return
        req.events.append(StreamDelta(req.request_id, tokens, text, logprobs if req.logprobs is not None else None,
                                      req.finished, req.finish_reason, req.error))

    @property
    def has_unfinished(self) -> bool:
        return bool(self.requests)

    # ---- one step ------------------------------------------------------------------------------
    @torch.inference_mode()
    def step(self) -> list[Request]:
        """Run one forward over the scheduled chunks; returns the requests that got new events.

        With overlap, the tokens sampled in this step are read in the next one: each sampled
        request gets a placeholder token (its value lives on the device) and the next step's
        forward takes it from there. The order inside a step keeps the GPU busy:

            schedule ─▶ launch forward(N) ─▶ read step N-1's tokens (its copy was queued before N)
              ─▶ append / stop checks / stream ─▶ sample N on the device ─▶ queue N's copy to host
        """
        prev, self._inflight = self._inflight, None
        sched = self.scheduler.schedule()
        logits = None
        if sched.chunks:
            info, source = self._sequence_info(sched, prev)
            if source is not None:
                logits = self.model.forward(info, token_source=(prev.tokens, source))  # [b, V]
            else:
                logits = self.model.forward(info)  # [b, V]
            self.num_steps += 1
            self.num_progress += 1
            self.num_tokens_computed += sched.num_tokens
            for c in sched.chunks:
                c.request.num_computed += c.num_tokens
        touched = self._read(prev) if prev is not None else []
        if logits is None:
            return touched
        for c in sched.chunks:  # after _read: every token of a full page is known now
            self.scheduler.register_full_pages(c.request)
        done = [i for i, c in enumerate(sched.chunks) if c.completes and not c.request.finished]
        if not done:
            return touched
        launched = self._sample(logits, done, sched)
        if self.overlap:
            self._inflight = launched
            return touched
        return touched + [r for r in self._read(launched) if r not in touched]

    def _sample(self, logits: torch.Tensor, done: list[int], sched: SchedulerOutput) -> "_Inflight":
        """Sample on the device, give each request a placeholder token, queue the copy to the host."""
        reqs = [sched.chunks[i].request for i in done]
        if done == list(range(done[0], done[-1] + 1)):
            rows = logits[done[0] : done[-1] + 1]  # a slice: no index tensor to copy
        else:
            rows = logits.index_select(0, _device_index(done, logits.device))
        tokens, logprobs = self.sampler.sample(rows, reqs)  # [n] int64, [n] float32 or None
        positions = []
        for req in reqs:
            positions.append(len(req.token_ids))
            req.token_ids.append(PLACEHOLDER)
            # the last token of a request that ends by length: never scheduled again
            req.finishing = req.num_output >= req.sampling.max_tokens or len(req.token_ids) >= self.config.max_seq_len
        return _Inflight.launch(reqs, positions, tokens, logprobs)

    def _read(self, inflight: "_Inflight") -> list[Request]:
        """Wait for a sampled step's tokens on the host, then append, check stops, stream."""
        tokens, logprobs = inflight.wait()
        self.num_progress += 1
        touched = []
        for req, pos, token, lp in zip(inflight.reqs, inflight.positions, tokens, logprobs):
            if req.finished:  # cancelled (or failed) while its token was in flight
                continue
            req.token_ids[pos] = token
            self._append(req, token, lp)
            touched.append(req)
        return touched

    def flush(self) -> list[Request]:
        """Read a step still in flight (overlap): its requests' tokens and events become final."""
        prev, self._inflight = self._inflight, None
        return self._read(prev) if prev is not None else []

    def _sequence_info(self, sched: SchedulerOutput, prev: "_Inflight | None" = None):
        """The step's SequenceInfo (built where the model wants it: the host for one copy per step)
        and, with overlap, token_source [T]: the row of `prev.tokens` that holds each placeholder, else -1."""
        chunks = [(c.request.token_ids[c.start : c.start + c.num_tokens], c.start, c.request.pages) for c in sched.chunks]
        device = getattr(self.model, "metadata_device", self.device)
        info = SequenceInfo.build(chunks, self.pool.page_size, sched.num_prefill, device)
        if prev is None:
            return info, None
        rows = {id(r): i for i, r in enumerate(prev.reqs)}
        source = []
        for c, (toks, _, _) in zip(sched.chunks, chunks):
            for t in toks:
                if t == PLACEHOLDER:
                    if id(c.request) not in rows:
                        raise RuntimeError(f"request {c.request.request_id} has a placeholder token from no step in flight")
                    source.append(rows[id(c.request)])
                else:
                    source.append(-1)
        if all(v < 0 for v in source):
            return info, None
        return info, torch.tensor(source, dtype=torch.long)

    def _append(self, req: Request, token: int, logprob: float | None) -> None:
        """`token` is already the request's last token (its placeholder was replaced)."""
        self.num_tokens_generated += 1
        if req.logprobs is not None:
            req.logprobs.append(logprob)
        new_text = req.detok.push([token])
        req.text += new_text
        p = req.sampling
        reason, cut = None, False
        if p.stop and new_text and self._cut_at_stop_string(req, len(new_text)):
            reason, cut = "stop", True
        elif token in req.stop_ids and req.num_output >= p.min_tokens:
            reason = "stop"
        elif req.num_output >= p.max_tokens or len(req.token_ids) >= self.config.max_seq_len:
            reason = "length"
        self._emit(req, [token], [logprob] if req.logprobs is not None else [])
        if reason is not None:
            self._finish(req, reason, flush=not cut)

    @staticmethod
    def _cut_at_stop_string(req: Request, num_new: int) -> bool:
        """Cut `req.text` before the first stop string that the newest text completes."""
        longest = max(map(len, req.sampling.stop))
        window_start = max(0, len(req.text) - num_new - longest + 1)
        hits = [i for s in req.sampling.stop if (i := req.text.find(s, window_start)) >= 0]
        if not hits:
            return False
        req.text = req.text[: min(hits)]
        req.num_text_sent = min(req.num_text_sent, len(req.text))
        return True

    # ---- metrics -------------------------------------------------------------------------------
    def metrics(self) -> EngineMetrics:
        m = self.pool.metrics()
        return EngineMetrics(
            kv_pages_total=m.num_pages, kv_pages_used=m.used, kv_pages_free=m.free, kv_pages_cached=m.cached,
            kv_usage=m.usage, prefix_cache_queries=m.prefix_queries, prefix_cache_hits=m.prefix_hits,
            prefix_cache_evictions=m.evictions,
            num_waiting=len(self.scheduler.waiting), num_running=len(self.scheduler.running),
            num_preemptions=self.scheduler.num_preemptions, num_steps=self.num_steps,
            num_tokens_computed=self.num_tokens_computed, num_tokens_generated=self.num_tokens_generated,
            finished=dict(self.finished),
        )


PLACEHOLDER = -1  # a sampled token whose value is still on the device


def _device_index(values: list[int], device: torch.device) -> torch.Tensor:
    """An index tensor on `device` without a pageable copy (which would wait for the GPU)."""
    host = torch.tensor(values, dtype=torch.long)
    if device.type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)


@dataclass
class _Inflight:
    """One step's sampled tokens: on the device, with a copy to pinned host memory queued."""

    reqs: list[Request]
    positions: list[int]  # index of each request's placeholder in its token_ids
    tokens: torch.Tensor  # [n] int64 on the model's device: what the next step reads
    host_tokens: torch.Tensor  # [n] int64, pinned on CUDA
    host_logprobs: torch.Tensor | None  # [n] float32
    event: Any  # torch.cuda.Event recorded after the copy, or None on the CPU

    @classmethod
    def launch(cls, reqs, positions, tokens: torch.Tensor, logprobs: torch.Tensor | None) -> "_Inflight":
        if tokens.device.type != "cuda":
            return cls(reqs, positions, tokens, tokens, logprobs, None)
        host_tokens = torch.empty(tokens.shape, dtype=tokens.dtype, pin_memory=True)
        host_tokens.copy_(tokens, non_blocking=True)
        host_lp = None
        if logprobs is not None:
            host_lp = torch.empty(logprobs.shape, dtype=logprobs.dtype, pin_memory=True)
            host_lp.copy_(logprobs, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        return cls(reqs, positions, tokens, host_tokens, host_lp, event)

    def wait(self) -> tuple[list[int], list[float | None]]:
        if self.event is not None:
            self.event.synchronize()  # this step's copy only: a step launched after it keeps running
        tokens = self.host_tokens.tolist()
        if self.host_logprobs is None:
            return tokens, [None] * len(tokens)
        lps = self.host_logprobs.tolist()
        return tokens, [lp if r.logprobs is not None else None for lp, r in zip(lps, self.reqs)]
