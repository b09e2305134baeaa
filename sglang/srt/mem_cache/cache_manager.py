"""Owns the page allocator, the radix cache and the request-to-token table; gives requests pages."""

from __future__ import annotations

from typing import Any, Optional, Protocol

from sglang.srt.mem_cache.allocator import PageAllocator, ReqToTokenPool, pages_to_slots
from sglang.srt.mem_cache.radix_cache import RadixCache


class PagedReq(Protocol):
    """What this manager reads and writes on a request (``managers.req.Req`` has it all)."""

    fill_ids: list[int]  # prompt + output tokens
    req_pool_idx: Optional[int]  # row in the request-to-token table
    pages: list[int]
    prefix_pages: int  # leading pages borrowed from the radix cache
    last_node: Any  # radix node holding the prefix (locked while the request runs)
    kv_len: int  # tokens whose KV is in ``pages``
    table_len: int  # tokens written to the request's row

    def reset_kv(self) -> None: ...


class KVCacheManager:
    def __init__(self, num_pages: int, page_size: int, rows: int, context_len: int,
                 enable_radix: bool, device: str = "cpu"):
        self.page_size = page_size
        self.num_pages = num_pages
        self.allocator = PageAllocator(num_pages)
        self.tree: Optional[RadixCache] = (
            RadixCache(page_size, self.allocator.free) if enable_radix else None
        )
        self.req_to_token = ReqToTokenPool(rows, context_len, device)

    # ---- accounting --------------------------------------------------------------------
    @property
    def available_pages(self) -> int:
        return self.allocator.free_pages + (self.tree.evictable_pages if self.tree else 0)

    def pages_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.page_size)

    def stats(self) -> dict:
        cached = self.tree.cached_pages if self.tree else 0
        free = self.allocator.free_pages
        return {
            "page_size": self.page_size,
            "total_pages": self.num_pages,
            "free_pages": free,
            "cached_pages": cached,
            "protected_pages": self.tree.protected_pages if self.tree else 0,
            "used_by_requests_pages": self.num_pages - free - cached,
            "max_total_num_tokens": self.num_pages * self.page_size,
            "available_tokens": self.available_pages * self.page_size,
            "free_req_rows": self.req_to_token.free_rows,
        }

    # ---- allocation --------------------------------------------------------------------
    def alloc_pages(self, n: int) -> Optional[list[int]]:
        if n > self.allocator.free_pages and self.tree is not None:
            self.tree.evict(n - self.allocator.free_pages)
        return self.allocator.alloc(n)

    def free_pages(self, pages: list[int]) -> None:
        """Give back pages no request holds any more (a PD layer's held-back pages)."""
        self.allocator.free(pages)

    def match_prefix(self, req: PagedReq, max_tokens: int) -> None:
        """Give ``req`` the cached pages of its longest cached prefix (at most ``max_tokens``)."""
        if self.tree is None or max_tokens < self.page_size:
            return
        match = self.tree.match_prefix(req.fill_ids[:max_tokens])
        if match.pages:
            self.tree.lock(match.node)
            req.last_node = match.node
            req.pages = list(match.pages)
            req.prefix_pages = len(match.pages)
            req.kv_len = len(match.pages) * self.page_size

    def grow(self, req: PagedReq, new_len: int) -> bool:
        """Make ``req`` own pages (and table slots) for positions [0, new_len)."""
        if req.req_pool_idx is None:
            row = self.req_to_token.alloc()
            if row is None:
                return False
            req.req_pool_idx = row
            if req.pages:
                self.req_to_token.write(
                    row, 0, pages_to_slots(req.pages, self.page_size, 0, req.kv_len)
                )
        need = self.pages_for(new_len) - len(req.pages)
        if need > 0:
            pages = self.alloc_pages(need)
            if pages is None:
                return False
            req.pages.extend(pages)
        start = min(req.table_len, new_len)
        if new_len == start + 1:  # a decode step's one position: no tensors to build
            ps = self.page_size
            slot = req.pages[start // ps] * ps + start % ps
            self.req_to_token.write_slot(req.req_pool_idx, start, slot)
            req.table_len = new_len
        elif new_len > start:
            slots = pages_to_slots(req.pages, self.page_size, start, new_len)
            self.req_to_token.write(req.req_pool_idx, start, slots)
            req.table_len = new_len
        return True

    def release(self, req: PagedReq, cache: bool = True) -> None:
        """Give back everything ``req`` holds; with ``cache``, keep its whole pages in the tree."""
        pages, first_own = req.pages, req.prefix_pages
        if self.tree is not None and cache and req.kv_len >= self.page_size:
            aligned = req.kv_len // self.page_size
            existing = self.tree.insert(req.fill_ids[: aligned * self.page_size], pages[:aligned])
            self.allocator.free(pages[first_own:existing])
            self.allocator.free(pages[aligned:])
        else:
            self.allocator.free(pages[first_own:])
        if self.tree is not None and req.last_node is not None:
            self.tree.unlock(req.last_node)
        if req.req_pool_idx is not None:
            self.req_to_token.free(req.req_pool_idx)
        req.reset_kv()

    def flush(self) -> bool:
        return self.tree.reset() if self.tree is not None else True
