"""Block coalescing of the transfer path (pure logic): adjacent memory regions register as one,
out-of-order page pairs that are adjacent on both sides fall into one run, a last chunk's KV
blocks and metadata rows concatenate into one write."""

from __future__ import annotations

import numpy as np
import pytest

from sglang.srt.disaggregation.common.utils import (
    Blocks,
    aux_blocks,
    group_concurrent_contiguous,
    kv_blocks,
    merge_adjacent,
    sort_pairs,
)


def test_adjacent_regions_merge_into_one_registration() -> None:
    # a KV pool's per-layer regions, given out of order, one allocation: one range
    assert merge_adjacent([1200, 1000, 1100], [100, 100, 100]) == [(1000, 300)]
    # a gap splits; empty regions vanish; an exact duplicate registers once
    assert merge_adjacent([0, 150, 300, 50, 0], [50, 100, 0, 0, 50]) == [(0, 50), (150, 100)]
    # overlapping regions stay apart rather than being widened
    assert merge_adjacent([0, 10], [20, 20]) == [(0, 20), (10, 20)]
    assert merge_adjacent([], []) == []


def test_sorted_pairs_find_runs_the_given_order_hides() -> None:
    src, dst = np.array([7, 6, 5, 4]), np.array([23, 22, 21, 20])
    assert len(group_concurrent_contiguous(src, dst)) == 4  # descending: four single pages
    runs = group_concurrent_contiguous(*sort_pairs(src, dst))
    assert (runs.src_starts.tolist(), runs.dst_starts.tolist(), runs.lengths.tolist()) == (
        [4], [20], [4])
    # a prefix hit's older pages listed after newer ones
    s, d = sort_pairs(np.array([10, 11, 2, 3]), np.array([40, 41, 30, 31]))
    assert s.tolist() == [2, 3, 10, 11] and d.tolist() == [30, 31, 40, 41]


def test_sorting_keeps_every_pair() -> None:
    rng = np.random.default_rng(1)
    src = rng.permutation(500)[:200]
    dst = rng.permutation(500)[:200]
    s, d = sort_pairs(src, dst)
    assert sorted(zip(s.tolist(), d.tolist())) == sorted(zip(src.tolist(), dst.tolist()))
    runs = group_concurrent_contiguous(s, d)
    moved = {(a + i, b + i) for a, b, n in zip(runs.src_starts, runs.dst_starts, runs.lengths)
             for i in range(n)}
    assert moved == set(zip(src.tolist(), dst.tolist())) and runs.lengths.sum() == 200
    with pytest.raises(ValueError, match="2 source pages but 1 destination pages"):
        sort_pairs(np.array([1, 2]), np.array([1]))


def test_already_sorted_pairs_are_returned_as_they_are() -> None:
    s, d = sort_pairs(np.array([1, 5, 9]), np.array([9, 5, 1]))
    assert s.tolist() == [1, 5, 9] and d.tolist() == [9, 5, 1]


def test_kv_and_aux_concatenate_into_one_block_list() -> None:
    runs = group_concurrent_contiguous(np.array([1, 2]), np.array([4, 5]))
    kv = kv_blocks(runs, [1000, 2000], [5000, 6000], 8)
    aux = aux_blocks([100], [200], [16], 1, 2)
    both = kv + aux
    assert both == Blocks([1008, 2008, 116], [5032, 6032, 232], [16, 16, 16])
    assert both.total_bytes() == kv.total_bytes() + aux.total_bytes()
    assert kv == Blocks([1008, 2008], [5032, 6032], [16, 16])  # operands unchanged
