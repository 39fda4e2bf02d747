"""The KV page pool: which of the CachedModel's pages each request owns, and the prefix cache.

Pages are ids 0..num_pages-1 of the model's paged KV store; the pool only does the bookkeeping.
A page is in exactly one of three states:

    free      ref 0, no content worth keeping                 -> `_free` (a stack)
    cached    ref 0, holds a full page of a known token prefix -> `_evictable` (LRU order)
    used      ref > 0, owned by one or more running requests

With prefix caching on, every full page a request writes is registered under a hash chain
h_i = H(h_{i-1}, tokens of page i), so the key names the whole prefix, not just the page. A new
request looks its prompt's full pages up in that order and takes a reference on every hit; only
full pages are shared, and new tokens always go to a fresh page, so a shared page is never
written. Freed cached pages stay findable until allocation needs them (least recently used first).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Sequence

ROOT_HASH = b""


def page_hash(parent: bytes, tokens: Sequence[int]) -> bytes:
    """Hash of one full page given its parent's hash: the key of the whole prefix up to it."""
    h = hashlib.blake2b(parent, digest_size=16)
    h.update(b"".join(int(t).to_bytes(8, "little", signed=True) for t in tokens))
    return h.digest()


@dataclass
class PoolMetrics:
    num_pages: int
    used: int  # held by requests
    free: int  # allocatable now: never-used plus cached (evictable)
    cached: int  # free pages that still hold a findable prefix
    prefix_queries: int  # full prompt pages looked up
    prefix_hits: int  # of those, found in the cache
    evictions: int

    @property
    def usage(self) -> float:
        return self.used / self.num_pages


class KVPagePool:
    def __init__(self, num_pages: int, page_size: int, enable_prefix_caching: bool = False):
        if num_pages < 1 or page_size < 1:
            raise ValueError(f"a KV pool needs >= 1 page of >= 1 token, got {num_pages} x {page_size}")
        self.num_pages = num_pages
        self.page_size = page_size
        self.enable_prefix_caching = enable_prefix_caching
        self._ref = [0] * num_pages
        self._free = list(range(num_pages - 1, -1, -1))  # pop() hands out low ids first
        self._evictable: OrderedDict[int, None] = OrderedDict()  # ref-0 cached pages, oldest first
        self._page_of: dict[bytes, int] = {}  # prefix hash -> page
        self._hash_of: dict[int, bytes] = {}  # page -> prefix hash
        self.prefix_queries = 0
        self.prefix_hits = 0
        self.evictions = 0

    # ---- capacity ------------------------------------------------------------------------------
    @property
    def num_free(self) -> int:
        return len(self._free) + len(self._evictable)

    @property
    def num_used(self) -> int:
        return self.num_pages - self.num_free

    def refs(self, page: int) -> int:
        """How many requests hold `page`."""
        return self._ref[page]

    def pages_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.page_size)

    # ---- allocate / free -----------------------------------------------------------------------
    def allocate(self, n: int) -> list[int] | None:
        """n fresh pages (ref 1), evicting least recently used cached pages if needed; None if too few."""
        if n > self.num_free:
            return None
        out = []
        for _ in range(n):
            if self._free:
                page = self._free.pop()
            else:
                page, _ = self._evictable.popitem(last=False)
                del self._page_of[self._hash_of.pop(page)]
                self.evictions += 1
            self._ref[page] = 1
            out.append(page)
        return out

    def free(self, pages: Sequence[int]) -> None:
        """Drop one reference on each page. Freed in reverse, so a chain's tail is evicted before its head."""
        for page in reversed(pages):
            ref = self._ref[page]
            if ref <= 0:
                raise RuntimeError(f"KV page {page} freed twice")
            self._ref[page] = ref - 1
            if ref == 1:
                if page in self._hash_of:
                    self._evictable[page] = None
                else:
                    self._free.append(page)

    # ---- prefix cache --------------------------------------------------------------------------
    def lookup(self, hashes: Sequence[bytes]) -> list[int]:
        """Pages of the longest cached run of `hashes` (a request's full-page hash chain); takes nothing."""
        if not self.enable_prefix_caching:
            return []
        out = []
        for h in hashes:
            page = self._page_of.get(h)
            if page is None:
                break
            out.append(page)
        return out

    def can_allocate(self, n: int, reusing: Sequence[int] = ()) -> bool:
        """Whether `n` fresh pages fit after taking refs on `reusing` (cached free pages it revives count)."""
        revived = sum(1 for p in reusing if self._ref[p] == 0)
        return n <= self.num_free - revived

    def acquire(self, pages: Sequence[int], num_queried: int | None = None) -> None:
        """Take a reference on prefix-cache hits (from `lookup`); counts them in the hit metrics."""
        for page in pages:
            if self._ref[page] == 0:
                del self._evictable[page]
            self._ref[page] += 1
        self.prefix_queries += len(pages) if num_queried is None else num_queried
        self.prefix_hits += len(pages)

    def register(self, page: int, h: bytes) -> None:
        """Make a full, used page findable under prefix hash `h` (first writer wins)."""
        if not self.enable_prefix_caching or h in self._page_of or page in self._hash_of:
            return
        self._page_of[h] = page
        self._hash_of[page] = h

    def reset_prefix_cache(self) -> None:
        """Forget every cached prefix (e.g. after new weights); cached free pages become plain free."""
        for page in self._evictable:
            self._free.append(page)
        self._evictable.clear()
        self._page_of.clear()
        self._hash_of.clear()

    def metrics(self) -> PoolMetrics:
        return PoolMetrics(self.num_pages, self.num_used, self.num_free, len(self._evictable),
                           self.prefix_queries, self.prefix_hits, self.evictions)

    def check_invariants(self) -> None:
        """Invariants, for tests: every page in exactly one state, refs consistent."""
        free, cached = set(self._free), set(self._evictable)
        assert len(free) == len(self._free) and not free & cached
        for page, ref in enumerate(self._ref):
            assert ref >= 0
            assert (ref == 0) == (page in free or page in cached), f"page {page}: ref {ref}"
            assert (page in cached) <= (page in self._hash_of)
        assert all(self._page_of[h] == p for p, h in self._hash_of.items())
