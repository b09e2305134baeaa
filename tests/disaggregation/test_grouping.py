"""Page-run grouping: runs split wherever the source or the destination stops advancing by one."""

from __future__ import annotations

import numpy as np
import pytest

from sglang.srt.disaggregation.common.utils import (
    Blocks,
    aux_blocks,
    batched,
    group_concurrent_contiguous,
    kv_blocks,
)


def _runs(src: list[int], dst: list[int]) -> list[tuple[int, int, int]]:
    r = group_concurrent_contiguous(np.array(src, np.int32), np.array(dst, np.int32))
    return list(zip(r.src_starts.tolist(), r.dst_starts.tolist(), r.lengths.tolist()))


def test_one_run_when_both_sides_are_contiguous() -> None:
    assert _runs([5, 6, 7, 8], [10, 11, 12, 13]) == [(5, 10, 4)]


def test_split_where_either_side_breaks() -> None:
    # src breaks after 3, dst breaks after 12
    assert _runs([1, 2, 3, 7, 8, 9], [10, 11, 12, 20, 21, 30]) == [
        (1, 10, 3), (7, 20, 2), (9, 30, 1),
    ]
    assert _runs([1, 2, 3, 4], [10, 11, 20, 21]) == [(1, 10, 2), (3, 20, 2)]


def test_descending_repeated_and_single_pages_are_their_own_runs() -> None:
    assert _runs([3, 2, 1], [0, 1, 2]) == [(3, 0, 1), (2, 1, 1), (1, 2, 1)]
    assert _runs([4, 4], [1, 2]) == [(4, 1, 1), (4, 2, 1)]
    assert _runs([9], [0]) == [(9, 0, 1)]


def test_empty_and_mismatched_inputs() -> None:
    assert _runs([], []) == []
    with pytest.raises(ValueError, match="3 source pages but 2 destination pages"):
        _runs([1, 2, 3], [1, 2])


def test_runs_cover_every_pair_exactly_once() -> None:
    rng = np.random.default_rng(0)
    src = np.sort(rng.choice(1000, 200, replace=False))
    dst = np.sort(rng.choice(1000, 200, replace=False))
    r = group_concurrent_contiguous(src, dst)
    pairs = [(s + i, d + i) for s, d, n in zip(r.src_starts, r.dst_starts, r.lengths)
             for i in range(n)]
    assert pairs == list(zip(src.tolist(), dst.tolist()))
    assert r.lengths.sum() == 200


def test_kv_blocks_give_one_block_per_run_per_region() -> None:
    runs = group_concurrent_contiguous(np.array([1, 2, 5]), np.array([0, 1, 7]))
    b = kv_blocks(runs, src_ptrs=[1000, 5000], dst_ptrs=[100000, 200000], item_len=64)
    assert b.src == [1000 + 64, 1000 + 5 * 64, 5000 + 64, 5000 + 5 * 64]
    assert b.dst == [100000, 100000 + 7 * 64, 200000, 200000 + 7 * 64]
    assert b.lens == [128, 64, 128, 64]
    assert b.total_bytes() == 2 * 3 * 64


def test_aux_blocks_copy_one_row_of_every_buffer() -> None:
    b = aux_blocks([100, 1000], [5000, 9000], [64, 512], src_index=2, dst_index=3)
    assert b == Blocks([100 + 128, 1000 + 1024], [5000 + 192, 9000 + 1536], [64, 512])


def test_batched_bounds_every_batch() -> None:
    b = Blocks(list(range(10)), list(range(10)), [1] * 10)
    pieces = batched(b, 4)
    assert [len(p.src) for p in pieces] == [4, 4, 2]
    assert sum((p.src for p in pieces), []) == b.src
