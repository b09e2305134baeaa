"""Page allocator over the KV pool, and the request-to-token table."""

from __future__ import annotations

import heapq

import torch


class PageAllocator:
    """Hands out page indices; prefers the lowest free pages so a request's pages tend to be
    consecutive (consecutive pages travel as one block in a KV transfer)."""

    def __init__(self, num_pages: int):
        self.num_pages = num_pages
        self._free: list[int] = list(range(num_pages))  # a heap
        self._is_free = bytearray(b"\x01") * num_pages

    @property
    def free_pages(self) -> int:
        return len(self._free)

    def alloc(self, n: int) -> list[int] | None:
        if n > len(self._free):
            return None
        pages = [heapq.heappop(self._free) for _ in range(n)]
        for p in pages:
            self._is_free[p] = 0
        return pages

    def free(self, pages: list[int]) -> None:
        for p in pages:
            if self._is_free[p]:
                raise RuntimeError(f"page {p} freed twice")
            self._is_free[p] = 1
            heapq.heappush(self._free, p)


class ReqToTokenPool:
    """Row r holds the KV slot of each position of the request that owns row r."""

    def __init__(self, rows: int, context_len: int, device: str | torch.device = "cpu"):
        self.table = torch.zeros((rows, context_len), dtype=torch.int64, device=device)
        self._free = list(range(rows - 1, -1, -1))
        self.rows = rows

    @property
    def free_rows(self) -> int:
        return len(self._free)

    def alloc(self) -> int | None:
        return self._free.pop() if self._free else None

    def free(self, row: int) -> None:
        self._free.append(row)

    def write(self, row: int, start: int, slots: torch.Tensor) -> None:
        self.table[row, start : start + len(slots)] = slots

    def write_slot(self, row: int, pos: int, slot: int) -> None:
        self.table[row, pos] = slot

    def read(self, row: int, length: int) -> torch.Tensor:
        return self.table[row, :length]


def pages_to_slots(pages: list[int], page_size: int, start: int, end: int) -> torch.Tensor:
    """Slots of positions [start, end) of a sequence laid out on ``pages``."""
    pos = torch.arange(start, end, dtype=torch.int64)
    page_t = torch.tensor(pages, dtype=torch.int64)
    return page_t[pos // page_size] * page_size + pos % page_size
