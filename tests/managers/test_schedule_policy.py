"""plan_extend's token budgets: --chunked-prefill-size and --max-prefill-tokens, as SGLang's
PrefillAdder (pure scheduling logic, on a real KVCacheManager and real Req objects)."""

from __future__ import annotations

from sglang.srt.managers.io_struct import TokenizedGenerateReqInput
from sglang.srt.managers.req import Req
from sglang.srt.managers.schedule_policy import plan_extend
from sglang.srt.mem_cache.cache_manager import KVCacheManager
from sglang.srt.sampling.sampling_params import SamplingParams

CONTEXT = 1024


def make_cache(page_size: int = 1, pages: int = 4096) -> KVCacheManager:
    return KVCacheManager(pages, page_size, 64, CONTEXT, enable_radix=False)


def reqs(*lens: int) -> list[Req]:
    sp = SamplingParams(max_new_tokens=4)
    return [Req(TokenizedGenerateReqInput(f"r{i}", list(range(1, n + 1)), sp), CONTEXT)
            for i, n in enumerate(lens)]


def test_batch_stays_within_max_prefill_tokens():
    cache, waiting = make_cache(), reqs(10, 10, 10, 10, 3)
    got, lens = plan_extend(cache, waiting, 8192, 64, 0, max_prefill_tokens=25)
    assert lens == [10, 10] and [r.rid for r in got] == ["r0", "r1"]
    # FCFS: the third (10 > 5 left) waits, and the small one behind it does not jump the queue.
    assert [r.rid for r in waiting] == ["r2", "r3", "r4"]
    got, lens = plan_extend(cache, waiting, 8192, 64, 0, max_prefill_tokens=25)
    assert lens == [10, 10, 3] and sum(lens) <= 25 and not waiting


def test_exact_fit_and_default_is_unbounded():
    cache, waiting = make_cache(), reqs(10, 15, 1)
    _, lens = plan_extend(cache, waiting, 8192, 64, 0, max_prefill_tokens=25)
    assert lens == [10, 15] and len(waiting) == 1
    cache, waiting = make_cache(), reqs(*[100] * 8)
    _, lens = plan_extend(cache, waiting, 8192, 64, 0)
    assert lens == [100] * 8


def test_longer_request_is_admitted_alone():
    cache, waiting = make_cache(), reqs(40, 5)
    _, lens = plan_extend(cache, waiting, 8192, 64, 0, max_prefill_tokens=16)
    assert lens == [40] and [r.rid for r in waiting] == ["r1"]  # alone, and whole
    # ... but never past the chunk size: it is chunked (page-aligned) as before.
    cache, waiting = make_cache(page_size=4), reqs(40, 5)
    got, lens = plan_extend(cache, waiting, 16, 64, 0, max_prefill_tokens=8)
    assert lens == [16] and got[0].rid == "r0"
    got[0].kv_len += 16  # the pass ran; its remaining 24 tokens continue first
    waiting.insert(0, got[0])
    _, lens = plan_extend(cache, waiting, 16, 64, 0, max_prefill_tokens=8)
    assert lens == [16]


def test_chunk_budget_still_applies_with_room_in_max_prefill():
    cache, waiting = make_cache(), reqs(6, 6, 6)
    _, lens = plan_extend(cache, waiting, 16, 64, 0, max_prefill_tokens=1000)
    assert lens == [6, 6, 4] and sum(lens) == 16  # the third is chunked to the chunk budget
