"""Pure-logic tests of the page allocator and the radix prefix cache."""

from __future__ import annotations

import random

import pytest

from sglang.srt.mem_cache.allocator import PageAllocator, pages_to_slots
from sglang.srt.mem_cache.radix_cache import RadixCache


def test_allocator_prefers_low_contiguous_pages_and_rejects_double_free():
    a = PageAllocator(8)
    assert a.alloc(3) == [0, 1, 2]
    a.free([1])
    assert a.alloc(2) == [1, 3]
    assert a.alloc(10) is None
    with pytest.raises(RuntimeError):
        a.free([4])


def test_pages_to_slots():
    assert pages_to_slots([5, 2], 4, 2, 7).tolist() == [22, 23, 8, 9, 10]


@pytest.mark.parametrize("page_size", [1, 4])
def test_match_insert_lock_evict(page_size):
    a = PageAllocator(64)
    tree = RadixCache(page_size, a.free)
    seq = list(range(100, 100 + 5 * page_size))
    pages = a.alloc(5)
    assert tree.insert(seq, pages) == 0
    # a longer query matches the cached pages; a partial page never matches
    m = tree.match_prefix(seq + [1, 2, 3])
    assert m.pages == pages
    m = tree.match_prefix(seq[: 2 * page_size + page_size // 2 + 1])
    assert m.pages == pages[:2] if page_size > 1 else pages[:3]
    # a diverging sequence shares the common pages only
    other = seq[: 2 * page_size] + [7] * (3 * page_size)
    m2 = tree.match_prefix(other)
    assert m2.pages == pages[:2]
    # locked pages survive eviction; unlocked ones go
    tree.lock(m2.node)
    assert tree.protected_pages == 2
    freed = tree.evict(100)
    assert freed == 3 and tree.cached_pages == 2
    tree.unlock(m2.node)
    assert tree.evict(100) == 2
    assert a.free_pages == 64 - 0  # every page came back
    assert tree.cached_pages == 0 and tree.protected_pages == 0


def test_duplicate_insert_reports_existing_pages():
    a = PageAllocator(16)
    tree = RadixCache(2, a.free)
    seq = [1, 2, 3, 4, 5, 6]
    first = a.alloc(3)
    tree.insert(seq, first)
    dup = a.alloc(3)
    assert tree.insert(seq + [7, 8], dup + a.alloc(1)) == 3
    assert tree.cached_pages == 4


def test_random_workload_conserves_pages():
    rng = random.Random(0)
    a = PageAllocator(200)
    tree = RadixCache(2, a.free)
    for _ in range(300):
        seq = [rng.randrange(4) for _ in range(rng.randrange(2, 20))]
        m = tree.match_prefix(seq)
        need = len(seq) // 2 - len(m.pages)
        if need > a.free_pages:
            tree.evict(need - a.free_pages)
        own = a.alloc(need)
        assert own is not None
        pages = m.pages + own
        existing = tree.insert(seq, pages)
        a.free(pages[len(m.pages) : existing])
        assert a.free_pages + tree.cached_pages == 200
    assert tree.reset()
    assert a.free_pages == 200
