"""Radix prefix cache over whole KV pages.

Keys are token ids, cut into pages of ``page_size`` tokens; each node holds a run of pages and
the KV page of each. Only whole pages are cached. A node with ``lock_ref > 0`` is in use by a
running request and cannot be evicted; unlocked leaves are evicted least recently used first.
"""

from __future__ import annotations

import heapq
import itertools
import time
from typing import Callable, NamedTuple, Optional


class _Node:
    __slots__ = ("key", "pages", "children", "parent", "lock_ref", "last_access")

    def __init__(self, key: tuple[int, ...], pages: list[int], parent: Optional["_Node"]):
        self.key = key
        self.pages = pages
        self.children: dict[tuple[int, ...], _Node] = {}
        self.parent = parent
        self.lock_ref = 0
        self.last_access = time.monotonic()


class MatchResult(NamedTuple):
    pages: list[int]
    node: _Node


class RadixCache:
    def __init__(self, page_size: int, free_pages: Callable[[list[int]], None]):
        self.page_size = page_size
        self._free_pages = free_pages
        self.root = _Node((), [], None)
        self.root.lock_ref = 1
        self.cached_pages = 0
        self.protected_pages = 0
        self._tick = itertools.count()

    def _child_key(self, key: tuple[int, ...]) -> tuple[int, ...]:
        return key[: self.page_size]

    def _common_pages(self, a: tuple[int, ...], b: tuple[int, ...]) -> int:
        ps, n = self.page_size, 0
        while n * ps < min(len(a), len(b)) and a[n * ps : (n + 1) * ps] == b[n * ps : (n + 1) * ps]:
            n += 1
        return n

    def _split(self, node: _Node, pages: int) -> _Node:
        """Cut ``node`` after ``pages`` pages; returns the new upper part."""
        cut = pages * self.page_size
        upper = _Node(node.key[:cut], node.pages[:pages], node.parent)
        upper.lock_ref = node.lock_ref
        upper.last_access = node.last_access
        assert node.parent is not None
        node.parent.children[self._child_key(upper.key)] = upper
        node.key, node.pages, node.parent = node.key[cut:], node.pages[pages:], upper
        upper.children[self._child_key(node.key)] = node
        return upper

    def match_prefix(self, token_ids: list[int]) -> MatchResult:
        key = tuple(token_ids[: len(token_ids) // self.page_size * self.page_size])
        node, pages, now = self.root, [], time.monotonic()
        while key:
            child = node.children.get(self._child_key(key))
            if child is None:
                break
            n = self._common_pages(child.key, key)
            if n < len(child.pages):
                child = self._split(child, n)
            child.last_access = now
            pages.extend(child.pages)
            key = key[len(child.key) :]
            node = child
        return MatchResult(pages, node)

    def insert(self, token_ids: list[int], pages: list[int]) -> int:
        """Cache ``pages`` (one per page of ``token_ids``). Returns how many leading pages were
        already cached; those of the caller's pages are not taken (the caller frees them unless
        they are the very pages the cache holds)."""
        key = tuple(token_ids[: len(pages) * self.page_size])
        node, done, now = self.root, 0, time.monotonic()
        while key:
            child = node.children.get(self._child_key(key))
            if child is None:
                new = _Node(key, pages[done:], node)
                node.children[self._child_key(key)] = new
                self.cached_pages += len(new.pages)
                return done
            n = self._common_pages(child.key, key)
            if n < len(child.pages):
                child = self._split(child, n)
            child.last_access = now
            done += n
            key = key[len(child.key) :]
            node = child
        return done

    def lock(self, node: _Node) -> None:
        while node is not self.root:
            if node.lock_ref == 0:
                self.protected_pages += len(node.pages)
            node.lock_ref += 1
            node = node.parent  # type: ignore[assignment]

    def unlock(self, node: _Node) -> None:
        while node is not self.root:
            node.lock_ref -= 1
            assert node.lock_ref >= 0, "radix cache lock_ref went negative"
            if node.lock_ref == 0:
                self.protected_pages -= len(node.pages)
            node = node.parent  # type: ignore[assignment]

    @property
    def evictable_pages(self) -> int:
        return self.cached_pages - self.protected_pages

    def evict(self, num_pages: int) -> int:
        """Free at least ``num_pages`` pages if possible; returns how many were freed."""
        heap = [(n.last_access, next(self._tick), n) for n in self._leaves() if n.lock_ref == 0]
        heapq.heapify(heap)
        freed = 0
        while freed < num_pages and heap:
            _, _, node = heapq.heappop(heap)
            self._free_pages(node.pages)
            freed += len(node.pages)
            self.cached_pages -= len(node.pages)
            parent = node.parent
            assert parent is not None
            del parent.children[self._child_key(node.key)]
            if parent is not self.root and not parent.children and parent.lock_ref == 0:
                heapq.heappush(heap, (parent.last_access, next(self._tick), parent))
        return freed

    def _leaves(self) -> list[_Node]:
        out, stack = [], [self.root]
        while stack:
            n = stack.pop()
            if not n.children and n is not self.root:
                out.append(n)
            stack.extend(n.children.values())
        return out

    def reset(self) -> bool:
        """Drop everything (``/flush_cache``); refused while a request holds cached pages."""
        if self.protected_pages:
            return False
        self.evict(self.cached_pages)
        return True
