"""KV handoff through the project's transfer path against the raw transfer engine, side by side.

    python benchmarks/bench_kv_transfer.py [--backend mooncake|nixl|both] [--quick] [--reps N]
        [--models smollm2-135m,qwen3-0.6b,llama-3.1-8b] [--pages 1,16,64] [--tokens 128,1024,8192]
        [--alloc contig|frag]       (filters of the sampled matrix below)

A prefill and a decode KV manager run in two processes (tests/disaggregation/transfer_procs.py),
each with a real KVPool of a model's KV shape (layers, KV heads, head dim; bf16; no weights)
and a real transfer engine on loopback. Per case (backend, model, page size, prompt tokens,
allocation), best of --reps (3x that for cases under 32 MB), the project's path and every raw
way interleaved rep by rep so that all of them see the same machine load:
  project  the project's path: the decode sends its page list (metadata), the prefill's
           sender sends all pages as one chunk; timed from the prefill's send() to the decode's
           poll() reading Success (pages, metadata row, completion message). The handshake and
           metadata exchange before it are timed apart ("setup ms", through the test pipe).
  raw      the same engine in the same processes moving the same bytes at its best, timed
           around the engine calls only: one block; 1 MiB blocks; the project's own block list.
           Mooncake: batch_transfer_sync_write (batches of SGLANG_MOONCAKE_MAX_TRANSFER_BATCH_
           INDICES); NIXL: prepped descriptor lists + make_prepped_xfer (prep not timed) and
           initialize_xfer, polling check_xfer_state; the faster of the two.
  memcpy   torch copy_ of the same bytes inside one process (the host's ceiling).
  busy     (--busy-prefill) the project's path again while the prefill's main thread runs
           Python until the room is done, as a scheduler computing its next batch does: the
           transfer worker then waits for the GIL (switch interval 5 ms) at each hand-over.
ratio = project / the best raw figure of the case. Allocation "contig": both sides' pages
consecutive (grouping makes one block per layer's K and V); "frag": pages drawn at random from a
pool twice as large (almost no pair adjacent on both sides: about one block per page and
layer, the worst case).
Only "same TP" exists (prefill and decode with one rank each): different TP is not implemented.

The matrix is sampled (default about 4 minutes here): smollm2-135m runs every page size
(1, 16, 64) x prompt (128, 1k, 8k) x allocation, except frag with page 1 at 8k (491,520 blocks
of 384 bytes: minutes on Mooncake TCP); qwen3-0.6b and llama-3.1-8b run page 16 at 1k and 8k
contig and page 1 at 1k frag. --quick: smollm2-135m, pages 1 and 16, prompts 128 and 1k, 2 reps.
Ends with one JSON line of headline figures (page 16 and page 1, contig, >= 1k tokens).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "disaggregation"))
import transfer_procs  # noqa: E402  (the two-process harness of the transfer tests)

SHAPES = {  # num_layers, num_kv_heads, head_dim (bf16)
    "smollm2-135m": {"num_layers": 30, "num_kv_heads": 3, "head_dim": 64},
    "qwen3-0.6b": {"num_layers": 28, "num_kv_heads": 8, "head_dim": 128},
    "llama-3.1-8b": {"num_layers": 32, "num_kv_heads": 8, "head_dim": 128},
}
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
        peer = next(iter(self.mgr.prefill.peers.values()))
        same = kv_blocks(_runs(src_pages, dst_pages), a.kv_data_ptrs, peer.kv_ptrs,
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


def pages_for(alloc: str, n: int, pool: int, rng: random.Random) -> tuple[list[int], list[int]]:
    if alloc == "contig":
        return list(range(1, 1 + n)), list(range(3, 3 + n))
    return rng.sample(range(pool), n), rng.sample(range(pool), n)


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


def cases(quick: bool) -> list[tuple[str, int, int, str]]:
    """(model, page size, prompt tokens, allocation), grouped by (model, page size)."""
    if quick:
        return [("smollm2-135m", ps, n, al) for ps in (16, 1) for n in (128, 1024)
                for al in ("contig", "frag")]
    out = [("smollm2-135m", ps, n, al) for ps in (16, 1, 64) for n in (128, 1024, 8192)
           for al in ("contig", "frag") if not (ps == 1 and n == 8192 and al == "frag")]
    for m in ("qwen3-0.6b", "llama-3.1-8b"):
        out += [(m, 16, 1024, "contig"), (m, 16, 8192, "contig"), (m, 1, 1024, "frag")]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", default="both", choices=["mooncake", "nixl", "both"])
    ap.add_argument("--quick", action="store_true", help="a subset, about a minute")
    ap.add_argument("--reps", type=int, default=None, help="best of N (default 3, quick 2)")
    ap.add_argument("--models", default=None, help="comma list: keep only these models")
    ap.add_argument("--pages", default=None, help="comma list: keep only these page sizes")
    ap.add_argument("--tokens", default=None, help="comma list: keep only these prompt sizes")
    ap.add_argument("--alloc", default=None, choices=["contig", "frag"])
    ap.add_argument("--busy-prefill", action="store_true",
                    help="also time the project's path while the prefill's main thread runs "
                         "Python (as a scheduler does): the 'busy' column")
    args = ap.parse_args()
    reps = args.reps or (2 if args.quick else 3)
    backends = ["mooncake", "nixl"] if args.backend == "both" else [args.backend]
    matrix = [c for c in cases(args.quick)
              if (args.models is None or c[0] in args.models.split(","))
              and (args.pages is None or str(c[1]) in args.pages.split(","))
              and (args.tokens is None or str(c[2]) in args.tokens.split(","))
              and (args.alloc is None or c[3] == args.alloc)]
    print("KV transfer between two processes on loopback, bf16, same TP (1 rank each; different "
          f"TP is not implemented); best of {reps}", flush=True)
    hdr = (f"{'backend':8} {'model':13} {'page':>4} {'tokens':>6} {'alloc':6} {'MB':>8} "
           f"{'blocks':>7} {'setup ms':>8} {'proj ms':>8} {'proj':>6} {'one':>6} {'1MiB':>6} "
           f"{'same':>6} {'memcpy':>6} {'ratio':>6}"
           + (f" {'busy':>6}" if args.busy_prefill else "") + "  (GB/s; ratio = proj / best raw)")
    rows: list[dict[str, Any]] = []
    t_start = time.time()
    for backend in backends:
        print("\n" + hdr, flush=True)
        groups: dict[tuple[str, int], list[tuple[int, str]]] = {}
        for m, ps, n, al in matrix:
            groups.setdefault((m, ps), []).append((n, al))
        for (model, ps), items in groups.items():
            need = max(-(-n // ps) * (2 if al == "frag" else 1) for n, al in items) + 8
            rows += run_group(backend, model, ps, items, need, reps, args.busy_prefill)
    print(f"\ntotal {time.time() - t_start:.0f} s", flush=True)
    print(json.dumps(headline(rows)), flush=True)


def run_group(backend: str, model: str, ps: int, items: list[tuple[int, str]], pool: int,
              reps: int, busy: bool = False) -> list[dict[str, Any]]:
    shape = SHAPES[model]
    item = ps * shape["num_kv_heads"] * shape["head_dim"] * 2
    from sglang.srt.disaggregation.common.utils import free_port

    port = free_port()
    p, d = BenchProc(f"prefill-{backend}"), BenchProc(f"decode-{backend}")
    rng, rows = random.Random(0), []
    try:
        kw = dict(page_size=ps, num_pages=pool, layout=shape)
        p.start("setup", backend, "prefill", port, **kw)
        d.start("setup", backend, "decode", port, **kw)
        p.result("setup", 120)
        d.result("setup", 120)
        addr = f"127.0.0.1:{port}"
        run_case(p, d, addr, [0], [0], 1)  # first transfer: handshake, engine connection
        for n, al in items:
            npages = -(-n // ps)
            src, dst = pages_for(al, npages, pool, rng)
            nbytes = npages * item * 2 * shape["num_layers"]
            # interleaved (project, then every raw way, per rep) so all see the same load;
            # small cases are cheap, so they get more reps against the noise
            r: dict[str, float] = {}
            for _ in range(reps * (3 if nbytes < 32e6 else 1)):
                got = [run_case(p, d, addr, src, dst, 1), p.call("raw", src, dst, 1, timeout=600)]
                if busy:
                    got.append({"busy": run_case(p, d, addr, src, dst, 1, True)["project"]})
                for one in got:
                    for k, v in one.items():
                        r[k] = min(v, r.get(k, float("inf")))
            row = {"backend": backend, "model": model, "page": ps, "tokens": n, "alloc": al,
                   "bytes": nbytes, "blocks": _blocks(src, dst) * 2 * shape["num_layers"],
                   **r}
            print_row(row)
            rows.append(row)
    finally:
        p.close()
        d.close()
    return rows


def _runs(src: list[int], dst: list[int]) -> Any:
    """The page runs the project's transfer worker makes of these pages."""
    from sglang.srt.disaggregation.common import utils

    pairs = (np.asarray(src), np.asarray(dst))
    if hasattr(utils, "sort_pairs"):  # absent before coalescing of out-of-order pages
        pairs = utils.sort_pairs(*pairs)
    return utils.group_concurrent_contiguous(*pairs)


def _blocks(src: list[int], dst: list[int]) -> int:
    return len(_runs(src, dst))


def gbps(row: dict[str, Any], key: str) -> float:
    return row["bytes"] / row[key] / 1e9


def best_raw(row: dict[str, Any]) -> float:
    return max(gbps(row, k) for k in row if k.split("/")[0] in ("one", "1MiB", "same"))


def print_row(row: dict[str, Any]) -> None:
    def g(prefix: str) -> float:
        return max([gbps(row, k) for k in row if k.split("/")[0] == prefix] or [0.0])
    ratio = gbps(row, "project") / best_raw(row)
    row["ratio"] = ratio
    print(f"{row['backend']:8} {row['model']:13} {row['page']:>4} {row['tokens']:>6} "
          f"{row['alloc']:6} {row['bytes'] / 1e6:>8.1f} {row['blocks']:>7} "
          f"{row['setup'] * 1e3:>8.1f} {row['project'] * 1e3:>8.2f} {gbps(row, 'project'):>6.2f} "
          f"{g('one'):>6.2f} {g('1MiB'):>6.2f} {g('same'):>6.2f} {gbps(row, 'memcpy'):>6.2f} "
          f"{ratio:>6.2f}" + (f" {gbps(row, 'busy'):>6.2f}" if "busy" in row else ""), flush=True)


def headline(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"metric": "kv_transfer_project_over_raw_best"}
    for r in rows:
        if r["tokens"] >= 1024 and r["alloc"] == "contig":
            key = f"{r['backend']}/{r['model']}/p{r['page']}/{r['tokens']}"
            out[key] = {"gbps": round(gbps(r, "project"), 3), "raw_best": round(best_raw(r), 3),
                        "ratio": round(r["ratio"], 3)}
            if "busy" in r:
                out[key]["busy_gbps"] = round(gbps(r, "busy"), 3)
    for b in {r["backend"] for r in rows}:
        for ps in (16, 1):
            rs = [r["ratio"] for r in rows if r["backend"] == b and r["page"] == ps
                  and r["tokens"] >= 1024 and r["alloc"] == "contig"]
            if rs:
                out[f"min_ratio/{b}/p{ps}"] = round(min(rs), 3)
    return out


if __name__ == "__main__":
    main()
