"""Both processes of benchmarks/bench_kv_transfer.py: the transfer tests' two-process harness
(tests/disaggregation/transfer_procs.py) with precise timing of the project's path, the raw
engine's ways of moving the same bytes (Mooncake batch_transfer_sync_write; NIXL prepped lists
and initialize_xfer), a memcpy, and one timed room through the project's path."""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "disaggregation"))
import transfer_procs  # noqa: E402  (the two-process harness of the transfer tests)

SUCCESS, READY = 4, [2, 0]  # KVPoll.Success; WaitingForInput, Failed


class BenchNode(transfer_procs.Node):
    """The test harness's node plus precise timing and the raw-engine measurements."""

    def send_timed(self, room: int, pages: list[int], delay: float, busy: bool = False) -> float:
        """Send every page as the last chunk; with ``busy`` this thread then keeps running
        Python until the room is done, as a scheduler thread computing its next batch does
        (the transfer worker then competes with it for the GIL)."""
        time.sleep(delay)  # let the decode start polling first
        t0 = time.monotonic()
        conn = self.conns[room]
        conn.send(np.asarray(pages, dtype=np.int32), True)
        if busy:
            x, end = 0, t0 + 120
            while int(conn.poll()) not in (SUCCESS, 0) and time.monotonic() < end:
                for i in range(200):  # about 10 us of bytecode between polls
                    x += i
        return t0

    def setup(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        out = super().setup(*args, **kwargs)
        self.arrived: dict[int, float] = {}
        if self.mgr.decode is not None:  # note when each Success reaches the decode's manager
            side, on_status = self.mgr.decode, self.mgr.decode.on_status

            def on_status_timed(msg: Any) -> None:
                on_status(msg)
                if msg.status == SUCCESS:
                    self.arrived[msg.room] = time.monotonic()
            side.on_status = on_status_timed
        return out

    def wait_success(self, room: int, timeout: float = 120.0) -> float:
        """When the room's Success reached the decode (its control thread), waiting without
        spinning: a polling loop here would take a core from the transfer on small machines."""
        conn, end = self.conns[room], time.monotonic() + timeout
        while True:
            st = int(conn.poll())
            if st == SUCCESS:
                return self.arrived.pop(room)
            if st == 0 or time.monotonic() > end:
                raise RuntimeError(f"room {room} ended in {st}: {conn.failure_exception()}")
            time.sleep(1e-3)

    def raw(self, src_pages: list[int], dst_pages: list[int], reps: int) -> dict[str, float]:
        """Best seconds per way of moving the case's bytes with the engine itself."""
        import torch

        from sglang.srt.disaggregation.common.utils import Blocks, kv_blocks

        a = self.mgr.args
        peer = next(iter(self.mgr.prefill.decodes.peers.values()))
        same = kv_blocks(runs_of(src_pages, dst_pages), a.kv_data_ptrs, peer.kv_ptrs,
                         a.kv_item_len)
        total = same.total_bytes()
        s0, d0, mib = a.kv_data_ptrs[0], peer.kv_ptrs[0], 1 << 20
        offs = list(range(0, total, mib))
        lists = {
            "one": Blocks([s0], [d0], [total]),
            "1MiB": Blocks([s0 + o for o in offs], [d0 + o for o in offs],
                           [min(mib, total - o) for o in offs]),
            "same": same,
        }
        out: dict[str, float] = {}
        for name, blocks in lists.items():
            fns = (self._mooncake_fns if self.backend.startswith("mooncake") else self._nixl_fns)(
                peer, blocks)
            for label, fn, cleanup in fns:
                key = name if label == "" else f"{name}/{label}"
                try:
                    out[key] = min(_timed(fn) for _ in range(reps))
                except Exception:  # e.g. one block over several registrations (older code)
                    pass
                cleanup()
        flat = self.pool.buffer.view(-1).view(torch.uint8)[:total]
        scratch = torch.empty_like(flat)
        out["memcpy"] = min(_timed(lambda: scratch.copy_(flat)) for _ in range(reps))
        return out

    def _mooncake_fns(self, peer: Any, blocks: Any) -> list[Any]:
        from sglang.srt.disaggregation.common.utils import batched
        from sglang.srt.env import envs

        eng, sess, size = self.mgr.engine.engine, peer.handle, envs.max_transfer_batch
        pieces = batched(blocks, size)

        def run() -> None:
            for p in pieces:
                rc = eng.batch_transfer_sync_write(sess, p.src, p.dst, p.lens)
                if rc < 0:
                    raise RuntimeError(f"batch_transfer_sync_write: {rc}")
        return [("", run, lambda: None)]

    def _nixl_fns(self, peer: Any, blocks: Any) -> list[Any]:
        ag, name = self.mgr.agent.agent, peer.handle
        dev, rdev = self.mgr.kv_dev, peer.transfer["kv_dev"]
        mem, rmem = self.mgr.kv_mem, peer.transfer["kv_mem"]
        n = len(blocks.src)
        lens = np.asarray(blocks.lens, dtype=np.uint64)
        loc = np.stack([np.asarray(blocks.src, dtype=np.uint64), lens,
                        np.full(n, dev, dtype=np.uint64)], axis=1)
        rem = np.stack([np.asarray(blocks.dst, dtype=np.uint64), lens,
                        np.full(n, rdev, dtype=np.uint64)], axis=1)
        lh = ag.prep_xfer_dlist("NIXL_INIT_AGENT", loc, mem)
        rh = ag.prep_xfer_dlist(name, rem, rmem)
        idx = np.arange(n, dtype=np.int32)

        def go(h: Any) -> None:
            state = ag.transfer(h)
            while state not in ("DONE", "ERR"):
                state = ag.check_xfer_state(h)
            ag.release_xfer_handle(h)
            if state == "ERR":
                raise RuntimeError("NIXL transfer ERR")

        def prepped() -> None:
            go(ag.make_prepped_xfer("WRITE", lh, idx, rh, idx))

        def init() -> None:
            go(ag.initialize_xfer("WRITE", ag.get_xfer_descs(loc, mem),
                                  ag.get_xfer_descs(rem, rmem), name, b""))

        def release() -> None:
            ag.release_dlist_handle(lh)
            ag.release_dlist_handle(rh)
        return [("prepped", prepped, lambda: None), ("init", init, release)]


def _timed(fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _serve(conn: Any) -> None:
    transfer_procs.Node = BenchNode  # the harness's loop, serving this node
    transfer_procs._serve(conn)


class BenchProc(transfer_procs.Proc):
    def __init__(self, name: str):
        ctx = transfer_procs.mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child,), name=name, daemon=True)
        self.proc.start()
        child.close()



def run_case(p: BenchProc, d: BenchProc, addr: str, src: list[int], dst: list[int],
             reps: int, busy: bool = False) -> dict[str, float]:
    best, setup = float("inf"), float("inf")
    for _ in range(reps):
        room = random.getrandbits(62) | 1
        t0 = time.perf_counter()
        d.call("open", room, addr)
        p.call("open", room, addr)
        assert d.call("wait", room, READY, 60.0, timeout=90)[0] == 2, "decode not ready"
        d.call("send_metadata", room, dst, 0)
        assert p.call("wait", room, READY, 60.0, timeout=90)[0] == 2, "prefill not ready"
        p.call("init", room, len(src), 0)
        setup = min(setup, time.perf_counter() - t0)
        d.start("wait_success", room)
        t_send = p.call("send_timed", room, src, 0.003, busy, timeout=300)
        best = min(best, d.result("wait_success", timeout=300) - t_send)
        p.call("clear", room)
        d.call("clear", room)
    return {"project": best, "setup": setup}


def runs_of(src: list[int], dst: list[int]) -> Any:
    """The page runs the project's transfer worker makes of these pages."""
    from sglang.srt.disaggregation.common import utils

    pairs = (np.asarray(src), np.asarray(dst))
    if hasattr(utils, "sort_pairs"):  # absent before coalescing of out-of-order pages
        pairs = utils.sort_pairs(*pairs)
    return utils.group_concurrent_contiguous(*pairs)
