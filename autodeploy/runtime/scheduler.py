"""The scheduler: which requests run in the next step, with how many tokens, on which pages.

One step, under a token budget (max_num_tokens) and a batch limit (max_batch_size):

    1. running decodes (1 token each), then running prefills continuing a chunk — each gets the
       pages its new tokens need; when the pool is out of pages, the running request last in
       policy order is preempted (pages freed, KV recomputed later) until the allocation fits
    2. waiting requests in policy order (none if this step preempted): prefix-cache lookup, then
       as many prompt tokens as the remaining budget allows (chunked prefill)

Policies order requests by a key: "fcfs" by arrival, "priority" by (priority, arrival), lower
first. The first request in policy order is never preempted for another, and the engine admits
only requests that fit the pool alone, so every step makes progress and nothing deadlocks.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Literal

from autodeploy.runtime.kv_pool import KVPagePool, page_hash
from autodeploy.runtime.request import Request, Status

Policy = Literal["fcfs", "priority"]


@dataclass
class ScheduledChunk:
    request: Request
    start: int  # request.num_computed before the step
    num_tokens: int

    @property
    def is_decode(self) -> bool:
        return self.num_tokens == 1 and self.start > 0

    @property
    def completes(self) -> bool:
        """The chunk reaches the end of the request's tokens: its logits sample the next token."""
        return self.start + self.num_tokens == len(self.request.token_ids)


@dataclass
class SchedulerOutput:
    chunks: list[ScheduledChunk] = field(default_factory=list)  # prefills first, then decodes
    num_prefill: int = 0
    preempted: list[Request] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(c.num_tokens for c in self.chunks)


class Scheduler:
    def __init__(self, pool: KVPagePool, max_batch_size: int, max_num_tokens: int, policy: Policy = "fcfs"):
        if policy not in ("fcfs", "priority"):
            raise ValueError(f"unknown scheduling policy {policy!r} (fcfs, priority)")
        self.pool = pool
        self.max_batch_size = max_batch_size
        self.max_num_tokens = max_num_tokens
        self.policy = policy
        self.waiting: list[Request] = []  # kept sorted by key
        self.running: list[Request] = []
        self.num_preemptions = 0

    def key(self, req: Request) -> tuple[int, ...]:
        return (req.priority, req.arrival) if self.policy == "priority" else (req.arrival,)

    # ---- queues --------------------------------------------------------------------------------
    def add(self, req: Request) -> None:
        req.status = Status.WAITING
        keys = [self.key(r) for r in self.waiting]
        self.waiting.insert(bisect.bisect_right(keys, self.key(req)), req)

    def remove(self, req: Request) -> None:
        """Take a request out of the queues and free its pages at once (cancel, failure, finish)."""
        if req in self.running:
            self.running.remove(req)
        elif req in self.waiting:
            self.waiting.remove(req)
        self._release(req)

    def _release(self, req: Request) -> None:
        self.pool.free(req.pages)
        req.pages = []
        req.num_computed = 0
        req.num_registered = 0

    def _preempt(self, req: Request) -> None:
        self.running.remove(req)
        self._release(req)
        req.num_preemptions += 1
        self.num_preemptions += 1
        self.add(req)

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    # ---- prefix cache --------------------------------------------------------------------------
    def _extend_hashes(self, req: Request, num_pages: int) -> list[bytes]:
        """The hash chain of the request's first `num_pages` full pages (computed once, then reused)."""
        ps = self.pool.page_size
        hashes = req.page_hashes
        while len(hashes) < num_pages:
            i = len(hashes)
            hashes.append(page_hash(hashes[-1] if hashes else b"", req.token_ids[i * ps : (i + 1) * ps]))
        return hashes[:num_pages]

    def register_full_pages(self, req: Request) -> None:
        """Offer the pages the request has completely written to the prefix cache."""
        if not self.pool.enable_prefix_caching:
            return
        full = min(req.num_computed // self.pool.page_size, len(req.pages))
        if full > req.num_registered:
            hashes = self._extend_hashes(req, full)
            for i in range(req.num_registered, full):
                self.pool.register(req.pages[i], hashes[i])
            req.num_registered = full

    # ---- one step ------------------------------------------------------------------------------
    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.max_num_tokens
        self.running.sort(key=self.key)
        scheduled: dict[int, ScheduledChunk] = {}  # id(request) -> chunk
        # decodes first: one token each keeps every generating request moving under a long prefill
        order = [r for r in self.running if r.num_uncomputed == 1] + [r for r in self.running if r.num_uncomputed > 1]
        for req in order:
            if budget == 0:
                break
            if req.status is not Status.RUNNING:
                continue  # preempted earlier in this loop
            if req.finishing or req.num_uncomputed == 0:
                continue  # its last token is in flight: nothing left to compute
            n = min(req.num_uncomputed, budget)
            if not self._grow(req, req.num_computed + n, scheduled, out):
                continue  # req itself was preempted
            scheduled[id(req)] = ScheduledChunk(req, req.num_computed, n)
            budget -= n
        # the budget refunded by preempted chunks is not reused: a preempting step admits nothing
        if not out.preempted:
            budget = self._admit(budget, scheduled)
        chunks = list(scheduled.values())
        prefills = [c for c in chunks if not c.is_decode]
        out.chunks = prefills + [c for c in chunks if c.is_decode]
        out.num_prefill = len(prefills)
        return out

    def _grow(self, req: Request, num_tokens: int, scheduled: dict, out: SchedulerOutput) -> bool:
        """Give `req` pages for `num_tokens`, preempting from the back of the policy order; False if req went."""
        need = self.pool.pages_for(num_tokens) - len(req.pages)
        while need > 0:
            pages = self.pool.allocate(need)
            if pages is not None:
                req.pages.extend(pages)
                return True
            victim = self.running[-1]  # running stays sorted by key
            scheduled.pop(id(victim), None)
            self._preempt(victim)
            out.preempted.append(victim)
            if victim is req:
                return False
        return True

    def _admit(self, budget: int, scheduled: dict) -> int:
        ps = self.pool.page_size
        while self.waiting and budget > 0 and len(self.running) < self.max_batch_size:
            req = self.waiting[0]
            hashes: list[bytes] = []
            matched: list[int] = []
            if self.pool.enable_prefix_caching:
                # at least the last token is computed: its logits sample the next one
                hashes = self._extend_hashes(req, (len(req.token_ids) - 1) // ps)
                matched = self.pool.lookup(hashes)
            computed = len(matched) * ps
            n = min(len(req.token_ids) - computed, budget)
            need = self.pool.pages_for(computed + n) - len(matched)
            if not self.pool.can_allocate(need, reusing=matched):
                break  # FCFS within the policy: no overtaking a request that waits for pages
            if self.pool.enable_prefix_caching:
                self.pool.acquire(matched, num_queried=len(hashes))
            req.pages = matched + self.pool.allocate(need)
            req.num_computed = computed
            req.num_registered = len(matched)
            req.num_cached_tokens = computed
            self.waiting.pop(0)
            self.running.append(req)
            req.status = Status.RUNNING
            scheduled[id(req)] = ScheduledChunk(req, computed, n)
            budget -= n
        return budget
