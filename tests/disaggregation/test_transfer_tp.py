"""PD between different tensor-parallel sizes at the transfer level, on Mooncake and NIXL: every
TP rank is its own process with its own KV manager and engine (prefill ranks > 0 register with
rank 0's bootstrap server). After random chunked transfers, each decode rank's pages equal the
matching head slices of the prefill ranks' pages byte for byte (on Mooncake as whole pages
through the staging buffers of tp_staging.py, on NIXL with staging off as one block per token),
pages nobody named stay zero,
each decode rank's metadata row arrives, and every room and destination is forgotten after
``clear``. A decode of another model is refused naming both TP sizes. The head-slice planner
and block builder are also checked alone for wider layouts (tp4 -> tp2, replicated heads)."""

from __future__ import annotations

import contextlib
import ctypes
import random
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from transfer_procs import Proc

from sglang.srt.disaggregation.base.conn import KVPoll
from sglang.srt.disaggregation.common.tp_layout import Slice, head_slice_blocks, plan_sources
from sglang.srt.distributed.parallel_state import head_split
from sglang.srt.utils.network import free_port

LAYOUT = {"num_layers": 2, "num_kv_heads": 4, "head_dim": 8}
NUM_HEADS, PAGE, NUM_PAGES = 8, 4, 32
DONE = [int(KVPoll.Success), int(KVPoll.Failed)]
READY = [int(KVPoll.WaitingForInput), int(KVPoll.Failed)]


def _start(backend: str, mode: str, port: int, size: int, layout=LAYOUT,
           secret: str = "", device: str = "cpu", staging: bool | None = None) -> list[Proc]:
    """All ranks of one side, set up in parallel (prefill rank 0 first: it owns the secret).
    On the CPU NIXL runs without staging buffers: one block per token (what a full staging
    takes)."""
    procs = [Proc(f"{mode}{r}-{backend}") for r in range(size)]
    staging = backend != "nixl" if staging is None else staging
    kw = dict(page_size=PAGE, num_pages=NUM_PAGES, layout=layout, device=device,
              env={"SGLANG_DISAGGREGATION_TP_STAGING_MB": "256" if staging else "0"})
    tp = {"size": size, "num_heads": NUM_HEADS}
    if mode == "prefill":
        procs[0].call("setup", backend, mode, port, timeout=60, tp={**tp, "rank": 0}, **kw)
        secret = procs[0].call("secret")
        rest = range(1, size)
    else:
        rest = range(size)
    for r in rest:
        procs[r].start("setup", backend, mode, port, tp={**tp, "rank": r, "secret": secret}, **kw)
    for r in rest:
        procs[r].result("setup", timeout=60)
    return procs


def _pool(raw: bytes, local: int) -> np.ndarray:
    """Pool bytes as [K|V, layer, page, token, kv_head, bytes of one head]."""
    return np.frombuffer(raw, dtype=np.uint8).reshape(2, LAYOUT["num_layers"], NUM_PAGES, PAGE,
                                                      local, -1)


def _transfer(prefill: list[Proc], decode: list[Proc], addr: str, staging: bool) -> None:
    p_tp, d_tp = len(prefill), len(decode)
    for i, p in enumerate(prefill):
        p.call("fill_random", 100 + i)
    for d in decode:
        d.call("zero")
    src = random.sample(range(NUM_PAGES), 10)
    dst = random.sample(range(NUM_PAGES), 10)
    room, src_aux, dst_aux = random.getrandbits(63) | 1, 2, 5
    everyone = prefill + decode
    for n in decode + prefill:
        n.call("open", room, addr)
    for d in decode:
        assert d.call("wait", room, READY)[0] == KVPoll.WaitingForInput
        d.call("send_metadata", room, dst, dst_aux)
    for p in prefill:
        assert p.call("wait", room, READY)[0] == KVPoll.WaitingForInput
        p.call("init", room, len(src), src_aux)
        p.call("set_aux", src_aux, room, 77, 1, -0.5, [(-0.5, 3)])
    for start, n in ((0, 4), (4, 3), (7, 3)):  # three chunks
        for p in prefill:
            p.call("send", room, src[start : start + n], start + n == len(src))
    for n in everyone:
        assert n.call("wait", room, DONE) == (KVPoll.Success, "")

    # the whole model's heads: each prefill rank's share put where head_split says
    p_pools = [_pool(p.call("pool_bytes"), head_split(NUM_HEADS, 4, p_tp, r).num_kv_heads)
               for r, p in enumerate(prefill)]
    full = np.zeros(p_pools[0].shape[:4] + (4, p_pools[0].shape[-1]), dtype=np.uint8)
    for r, pool in enumerate(p_pools):
        s = head_split(NUM_HEADS, 4, p_tp, r)
        full[:, :, :, :, s.kv_start : s.kv_start + s.num_kv_heads] = pool
    for r, d in enumerate(decode):
        s = head_split(NUM_HEADS, 4, d_tp, r)
        got = _pool(d.call("pool_bytes"), s.num_kv_heads)
        want = full[:, :, src][:, :, :, :, s.kv_start : s.kv_start + s.num_kv_heads]
        assert (got[:, :, dst] == want).all(), f"decode rank {r}: head slices differ"
        others = [i for i in range(NUM_PAGES) if i not in dst]
        assert not got[:, :, others].any(), f"decode rank {r}: pages nobody named were written"
        aux = d.call("get_aux", dst_aux)
        assert (aux["room"], aux["first_token"], aux["top_logprobs"]) == (room, 77, [(-0.5, 3)])
    regions = 2 * LAYOUT["num_layers"]
    for p in prefill:  # whole pages with staging (tp_staging.py), else one block per token
        dsts = len(decode) // len(prefill) or 1  # decode ranks each prefill rank serves
        blocks, pages = p.call("metric", room)["blocks"], len(src) * regions * dsts
        assert 0 < blocks <= pages if staging else blocks == pages * PAGE
    for n in everyone:
        n.call("clear", room)
        assert set(n.call("room_counts").values()) == {0}


@pytest.mark.parametrize("backend", ["mooncake", "nixl"])
def test_different_tp_head_slices_byte_for_byte(backend: str) -> None:
    with contextlib.ExitStack() as stack:
        def side(mode: str, port: int, size: int, **kw) -> list[Proc]:
            procs = _start(backend, mode, port, size, **kw)
            for p in procs:
                stack.callback(p.close)
            return procs

        wide, narrow = free_port(), free_port()
        with ThreadPoolExecutor(4) as ex:  # four sides start at once
            futs = [ex.submit(side, "prefill", wide, 2), ex.submit(side, "decode", wide, 1),
                    ex.submit(side, "prefill", narrow, 1), ex.submit(side, "decode", narrow, 2)]
            p2, d1, p1, d2 = [f.result() for f in futs]
        staging = backend != "nixl"
        _transfer(p2, d1, f"127.0.0.1:{wide}", staging)  # P tp2 -> D tp1
        _transfer(p1, d2, f"127.0.0.1:{narrow}", staging)  # P tp1 -> D tp2
        if backend != "mooncake":
            return  # (the handshake does not depend on the engine: checked once)
        # a decode of another model (2 KV heads, not 4): refused, naming both TP sizes
        other = side("decode", wide, 1, layout={**LAYOUT, "num_kv_heads": 2})[0]
        room = random.getrandbits(63) | 1
        other.call("open", room, f"127.0.0.1:{wide}")
        status, reason = other.call("wait", room, DONE)
        assert status == KVPoll.Failed
        assert "num_kv_heads): prefill 4, decode 2" in reason, reason
        assert "prefill --tp-size 2, decode --tp-size 1" in reason, reason
        _transfer(p2, d1, f"127.0.0.1:{wide}", staging)  # the pair still serves, over the same
        # registrations


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("backend", ["mooncake", "nixl"])
def test_different_tp_in_vram_byte_for_byte(backend: str) -> None:
    """KV pools and staging in VRAM (one GPU holds every rank): P tp2 -> D tp1 (scatter on the
    decode) and P tp1 -> D tp2 (gather on the prefill), byte for byte, as on the CPU."""
    with contextlib.ExitStack() as stack:
        def side(mode: str, port: int, size: int) -> list[Proc]:
            procs = _start(backend, mode, port, size, device="cuda", staging=True)
            for p in procs:
                stack.callback(p.close)
            return procs

        wide, narrow = free_port(), free_port()
        p2, d1 = side("prefill", wide, 2), side("decode", wide, 1)
        _transfer(p2, d1, f"127.0.0.1:{wide}", True)
        p1, d2 = side("prefill", narrow, 1), side("decode", narrow, 2)
        _transfer(p1, d2, f"127.0.0.1:{narrow}", True)


@pytest.mark.parametrize("p_tp,d_tp,kv", [(2, 1, 4), (1, 2, 4), (4, 2, 4), (4, 2, 2), (4, 1, 2),
                                          (1, 4, 2), (2, 4, 2), (2, 2, 4), (4, 4, 2)])
def test_slices_cover_every_head_once_and_blocks_copy_them(p_tp: int, d_tp: int, kv: int) -> None:
    """Pure logic (no engine): the planner gives each decode head exactly one source holding
    it, every prefill rank a destination, one metadata writer per decode rank; memcpy of the
    blocks it yields moves exactly those heads."""
    nh, hd, elem, pages = 8, 4, 2, 6
    head_bytes = hd * elem
    p_split = [head_split(nh, kv, p_tp, p) for p in range(p_tp)]
    full = np.random.default_rng(0).integers(0, 256, (pages, PAGE, kv, head_bytes), dtype=np.uint8)
    p_pools = [full[:, :, s.kv_start : s.kv_start + s.num_kv_heads].copy() for s in p_split]
    served: dict[int, int] = {}
    for d in range(d_tp):
        slices, counts = plan_sources(nh, kv, p_tp, d_tp, d)
        assert [s.sends_aux for s in slices] == [True] + [False] * (len(slices) - 1)
        mine = head_split(nh, kv, d_tp, d)
        pool = np.zeros((pages, PAGE, mine.num_kv_heads, head_bytes), dtype=np.uint8)
        src_pages, dst_pages = np.array([4, 0, 5]), np.array([1, 2, 3])
        for sl in slices:
            served[sl.prefill_rank] = counts[sl.prefill_rank]
            ps = p_split[sl.prefill_rank]
            b = head_slice_blocks(src_pages, dst_pages, [p_pools[sl.prefill_rank].ctypes.data],
                                  [pool.ctypes.data], PAGE * ps.num_kv_heads * head_bytes,
                                  PAGE * mine.num_kv_heads * head_bytes, PAGE, ps.num_kv_heads,
                                  mine.num_kv_heads, sl.src_head, sl.dst_head, sl.num_heads)
            assert len(b.src) == (3 * PAGE if sl.num_heads else 0)
            for s_, d_, n in zip(b.src, b.dst, b.lens):
                ctypes.memmove(d_, s_, n)
        want = full[src_pages][:, :, mine.kv_start : mine.kv_start + mine.num_kv_heads]
        assert (pool[dst_pages] == want).all(), f"decode rank {d}: head slices differ"
        assert not pool[[0, 4, 5]].any()
    assert sorted(served) == list(range(p_tp)), "a prefill rank has no destination"
    assert sum(served.values()) >= d_tp
    if p_tp == d_tp and kv >= p_tp:  # same TP: rank d gets all its heads from rank d
        assert plan_sources(nh, kv, p_tp, d_tp, 1)[0] == [Slice(1, 0, 0, kv // p_tp, True)]


@pytest.mark.parametrize("buffers,stop_after", [(2, None), (1, None), (2, 1)])
def test_gather_pieces_hold_the_slices_and_give_every_buffer_back(buffers: int,
                                                                 stop_after) -> None:
    """Pure logic (no engine): pieces() yields the decode's heads of every page once, in order,
    each piece's buffer holding exactly its pages while the next piece is gathered into a
    second buffer (one buffer: gathered in turn); every buffer is free again afterwards, also
    when the writer stops early (a failed write)."""
    from sglang.srt.disaggregation.common.tp_staging import GatherBuffers, pool_heads

    regions, pages, local, head_dim = 3, 12, 4, 8  # bf16: 16 bytes a head, 2 words
    pool = torch.randn(regions, pages, PAGE, local, head_dim).to(torch.bfloat16)
    heads = pool_heads(pool, regions, pages, PAGE, local)
    assert heads.shape == (regions, pages, PAGE, local, 2) and heads.dtype == torch.int64
    item = PAGE * 2 * head_dim * 2  # one decode page: 2 heads of 16 bytes a token
    bufs = GatherBuffers(buffers * regions * 4 * item, buffers, regions, pool.device)
    src, dst = np.array([7, 1, 2, 3, 9, 11, 0]), np.arange(20, 27)
    got, seen = [], []
    gen = bufs.pieces(heads, src, dst, 1, 2)
    for k, (buf, page_bytes, piece_dst) in enumerate(gen):
        assert page_bytes == item
        n = len(piece_dst)
        raw = buf.rows(n * item, pool).reshape(regions, n, PAGE, 2, head_dim)
        got.append(raw.clone())
        seen.extend(piece_dst.tolist())
        if stop_after is not None and k + 1 == stop_after:
            gen.close()
            break
    assert len(got) > 1 or stop_after == 1
    n = len(seen)
    assert seen == dst[:n].tolist()
    assert torch.equal(torch.cat(got, dim=1), pool[:, src[:n], :, 1:3])
    free = [bufs.take(block=False) for _ in range(buffers + 1)]
    assert sum(b is not None for b in free) == buffers, "a buffer was not given back"
    bufs.close()


def test_scatter_puts_staged_pages_into_the_heads_and_frees_the_range() -> None:
    """Pure logic (no engine): two sources' whole pages staged, then scattered into heads
    [0, 2) and [2, 4) of the decode pool's named pages; nothing else written; freed ranges
    are taken again."""
    from sglang.srt.disaggregation.common.tp_staging import ScatterStaging, pool_heads

    regions, pages, local, head_dim = 2, 10, 4, 4  # fp32: 16 bytes a head
    pool = torch.zeros(regions, pages, PAGE, local, head_dim)
    heads = pool_heads(pool, regions, pages, PAGE, local)
    item = PAGE * 2 * head_dim * 4  # one source page: 2 heads
    st = ScatterStaging(regions * 8 * item, regions, pool.device)
    dst = np.array([5, 2, 8])
    sent = {}
    for source, head in (("a", 0), ("b", 2)):
        idx = st.alloc(7, source, len(dst), item)
        assert idx is not None and len(idx) == 3
        sent[source] = torch.randn(regions, 3, PAGE, 2, head_dim)
        rows = st.buf.rows(3 * item, pool, int(idx[0]) * item)
        rows.copy_(sent[source].reshape(regions, -1))  # what the engine writes
        st.scatter(7, source, heads, dst, head)
    assert torch.equal(pool[:, dst, :, 0:2], sent["a"])
    assert torch.equal(pool[:, dst, :, 2:4], sent["b"])
    others = [p for p in range(pages) if p not in dst]
    assert not pool[:, others].any()
    assert st.alloc(8, "a", 9, item) is None  # 6 of 8 pages taken
    st.free_room(7)
    assert st.alloc(8, "a", 8, item) is not None
