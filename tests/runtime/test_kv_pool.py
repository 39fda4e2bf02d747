"""KV page pool: allocation, freeing, ref counts, the prefix cache's hash chain and LRU eviction."""

import pytest

from autodeploy.runtime.kv_pool import KVPagePool, page_hash


def chain(pages_of_tokens):
    hashes, parent = [], b""
    for toks in pages_of_tokens:
        parent = page_hash(parent, toks)
        hashes.append(parent)
    return hashes


def test_allocate_until_empty_then_free_returns_everything():
    pool = KVPagePool(num_pages=5, page_size=4)
    a = pool.allocate(3)
    b = pool.allocate(2)
    assert sorted(a + b) == [0, 1, 2, 3, 4]
    assert pool.allocate(1) is None and pool.num_free == 0 and pool.num_used == 5
    pool.free(a)
    assert pool.num_free == 3 and pool.metrics().used == 2
    pool.free(b)
    assert pool.num_free == 5
    pool.check_invariants()


def test_allocate_is_all_or_nothing():
    pool = KVPagePool(num_pages=4, page_size=2)
    pool.allocate(3)
    assert pool.allocate(2) is None
    assert pool.num_free == 1  # the failed call took nothing


def test_double_free_raises():
    pool = KVPagePool(num_pages=2, page_size=2)
    pages = pool.allocate(1)
    pool.free(pages)
    with pytest.raises(RuntimeError, match="freed twice"):
        pool.free(pages)


def test_pages_for_rounds_up():
    pool = KVPagePool(num_pages=2, page_size=16)
    assert [pool.pages_for(n) for n in (0, 1, 16, 17, 32)] == [0, 1, 1, 2, 2]


def test_hash_chain_names_the_whole_prefix():
    # the same page of tokens after a different prefix is a different key
    a = chain([[1, 2], [3, 4]])
    b = chain([[9, 9], [3, 4]])
    assert a[1] != b[1] and a[0] != b[0]
    assert chain([[1, 2], [3, 4]]) == a


def test_prefix_hit_shares_pages_with_refcount():
    pool = KVPagePool(num_pages=6, page_size=2, enable_prefix_caching=True)
    hashes = chain([[1, 2], [3, 4], [5, 6]])
    owner = pool.allocate(3)
    for p, h in zip(owner, hashes):
        pool.register(p, h)
    found = pool.lookup(chain([[1, 2], [3, 4], [7, 7]]))
    assert found == owner[:2]  # stops at the first miss
    pool.acquire(found, num_queried=3)
    m = pool.metrics()
    assert (m.prefix_queries, m.prefix_hits, m.used) == (3, 2, 3)
    pool.free(owner)  # the sharer still holds two pages
    assert pool.num_used == 2 and pool.metrics().cached == 1
    pool.free(found)
    assert pool.num_free == 6 and pool.metrics().cached == 3
    pool.check_invariants()


def test_cached_free_pages_are_found_again_and_revived():
    pool = KVPagePool(num_pages=3, page_size=2, enable_prefix_caching=True)
    hashes = chain([[1, 2], [3, 4]])
    pages = pool.allocate(2)
    for p, h in zip(pages, hashes):
        pool.register(p, h)
    pool.free(pages)
    assert pool.num_free == 3
    # reviving the two cached pages leaves one page for new allocations
    assert pool.can_allocate(1, reusing=pages) and not pool.can_allocate(2, reusing=pages)
    pool.acquire(pool.lookup(hashes))
    assert pool.num_used == 2 and pool.metrics().cached == 0
    pool.check_invariants()


def test_lru_eviction_takes_the_oldest_cached_page_and_forgets_its_hash():
    pool = KVPagePool(num_pages=3, page_size=1, enable_prefix_caching=True)
    old, new = chain([[1]]), chain([[2]])
    p_old = pool.allocate(1)
    pool.register(p_old[0], old[0])
    p_new = pool.allocate(1)
    pool.register(p_new[0], new[0])
    pool.free(p_old)
    pool.free(p_new)  # freed later: more recently used
    got = pool.allocate(2)  # one never-used page first, then the LRU cached page
    assert p_old[0] in got and p_new[0] not in got
    assert pool.lookup(old) == [] and pool.lookup(new) == p_new
    assert pool.metrics().evictions == 1
    pool.check_invariants()


def test_chain_tail_is_evicted_before_its_head():
    pool = KVPagePool(num_pages=3, page_size=1, enable_prefix_caching=True)
    hashes = chain([[1], [2], [3]])
    pages = pool.allocate(3)
    for p, h in zip(pages, hashes):
        pool.register(p, h)
    pool.free(pages)
    pool.allocate(1)
    # the head pages still match: a prefix hit needs the chain's beginning
    assert pool.lookup(hashes) == pages[:2]


def test_disabled_prefix_cache_finds_nothing():
    pool = KVPagePool(num_pages=2, page_size=1)
    pages = pool.allocate(1)
    pool.register(pages[0], chain([[1]])[0])
    pool.free(pages)
    assert pool.lookup(chain([[1]])) == [] and pool.metrics().cached == 0


def test_first_writer_wins_on_duplicate_prefix():
    pool = KVPagePool(num_pages=2, page_size=1, enable_prefix_caching=True)
    h = chain([[5]])[0]
    a, b = pool.allocate(1), pool.allocate(1)
    pool.register(a[0], h)
    pool.register(b[0], h)
    assert pool.lookup([h]) == a
    pool.free(b)
    assert pool.metrics().cached == 0  # b was never registered: plain free


def test_reset_prefix_cache_frees_cached_pages():
    pool = KVPagePool(num_pages=2, page_size=1, enable_prefix_caching=True)
    pages = pool.allocate(2)
    pool.register(pages[0], chain([[1]])[0])
    pool.free(pages[:1])
    pool.reset_prefix_cache()
    assert pool.lookup(chain([[1]])) == [] and pool.metrics().cached == 0 and pool.num_free == 1
    pool.free(pages[1:])
    pool.check_invariants()
