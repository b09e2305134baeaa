"""Metadata rows and their slot allocator."""

from __future__ import annotations

import pytest

from sglang.srt.disaggregation.common.metadata_buffers import (
    MetadataBuffers,
    MetadataSlotAllocator,
)


def test_rows_are_at_least_64_bytes_and_pointers_match_the_arrays() -> None:
    m = MetadataBuffers(4)
    ptrs, lens, item_lens = m.ptrs_lens_item_lens()
    assert len(ptrs) == len(lens) == len(item_lens) == len(m.buffers()) == 7
    assert all(n >= 64 for n in item_lens)
    assert [n * 4 for n in item_lens] == lens
    assert ptrs[0] == m.output_ids.ctypes.data


def test_set_get_reset_round_trip() -> None:
    m = MetadataBuffers(3)
    room = (1 << 63) + 12345  # rooms are unsigned 64-bit
    top = [(-0.1, 42), (-1.5, 7)]
    m.set_buf(1, room, first_token=42, cached_tokens=16, logprob=-0.1, top_logprobs=top)
    row = m.get_buf(1)
    assert row["room"] == room and row["first_token"] == 42 and row["cached_tokens"] == 16
    assert row["logprob"] == pytest.approx(-0.1)
    assert [(pytest.approx(lp), t) for lp, t in row["top_logprobs"]] == top
    assert m.get_buf(0) == {"room": 0, "first_token": 0, "cached_tokens": 0, "logprob": None,
                            "top_logprobs": []}
    m.set_buf(1, 9, first_token=3)  # a new request in the slot: nothing of the old one remains
    assert m.get_buf(1) == {"room": 9, "first_token": 3, "cached_tokens": 0, "logprob": None,
                            "top_logprobs": []}
    m.reset(1)
    assert m.get_buf(1)["room"] == 0


def test_top_logprobs_are_capped() -> None:
    m = MetadataBuffers(1)
    m.set_buf(0, 1, 0, top_logprobs=[(-1.0, i) for i in range(200)])
    assert len(m.get_buf(0)["top_logprobs"]) == 128


def test_slot_allocator() -> None:
    a = MetadataSlotAllocator(2)
    s1, s2 = a.alloc(), a.alloc()
    assert {s1, s2} == {0, 1} and a.alloc() is None and a.available() == 0
    a.free(s1)
    assert a.available() == 1 and a.alloc() == s1
    with pytest.raises(ValueError):
        a.free(5)
