"""``bench_kv_transfer.py --tp-pairs``: the project's KV handoff between different TP sizes
against the same bytes at the same TP.

Every rank is its own process with its own KV manager and engine (benchmarks/kv_transfer_procs.py
on the transfer tests' harness); prefill ranks > 0 register with rank 0's bootstrap server. Per
(backend, prefill tp, decode tp): one room of the whole model's KV for the prompt (every rank's
share), timed from the first prefill rank's send() to the last decode rank's Success (all the
processes share the machine's monotonic clock), best of --reps. Throughput = the model's KV bytes
of the prompt / that time; ratio = that throughput / the tp1 -> tp1 pair's.
"""

from __future__ import annotations

import random
from typing import Any

from kv_transfer_procs import READY, BenchProc

PAIRS = [(1, 1), (2, 1), (1, 2), (2, 2)]


def _side(backend: str, mode: str, port: int, size: int, kw: dict[str, Any],
          secret: str = "") -> list[BenchProc]:
    procs = [BenchProc(f"{mode}{r}-{backend}") for r in range(size)]
    first = 0
    if mode == "prefill":
        procs[0].call("setup", backend, mode, port, timeout=120, tp={**kw["tp"], "rank": 0},
                      **kw["pool"])
        secret, first = procs[0].call("secret"), 1
    for r in range(first, size):
        procs[r].start("setup", backend, mode, port, tp={**kw["tp"], "rank": r, "secret": secret},
                       **kw["pool"])
    for r in range(first, size):
        procs[r].result("setup", 120)
    return procs


def _one_room(ps: list[BenchProc], ds: list[BenchProc], addr: str, src: list[int],
              dst: list[int]) -> float:
    room = random.getrandbits(62) | 1
    for n in ds + ps:
        n.call("open", room, addr)
    for d in ds:
        assert d.call("wait", room, READY, 60.0, timeout=90)[0] == 2, "decode not ready"
        d.call("send_metadata", room, dst, 0)
    for p in ps:
        assert p.call("wait", room, READY, 60.0, timeout=90)[0] == 2, "prefill not ready"
        p.call("init", room, len(src), 0)
    for d in ds:
        d.start("wait_success", room)
    for p in ps:
        p.start("send_timed", room, src, 0.003)
    t0 = min(p.result("send_timed", 300) for p in ps)
    t1 = max(d.result("wait_success", 300) for d in ds)
    for n in ps + ds:
        n.call("clear", room)
    return t1 - t0


def run_pair(backend: str, p_tp: int, d_tp: int, shape: dict[str, int], page: int,
             tokens: int, reps: int) -> dict[str, Any]:
    from sglang.srt.disaggregation.common.utils import free_port

    npages = -(-tokens // page)
    kw = {"tp": {"size": 0, "num_heads": 2 * shape["num_kv_heads"]},
          "pool": {"page_size": page, "num_pages": npages + 8, "layout": shape}}
    port, procs = free_port(), []
    try:
        ps = _side(backend, "prefill", port, p_tp, {**kw, "tp": {**kw["tp"], "size": p_tp}})
        procs += ps
        ds = _side(backend, "decode", port, d_tp, {**kw, "tp": {**kw["tp"], "size": d_tp}})
        procs += ds
        addr = f"127.0.0.1:{port}"
        _one_room(ps, ds, addr, [0], [0])  # handshake, engine connections
        src, dst = list(range(1, 1 + npages)), list(range(3, 3 + npages))
        best = min(_one_room(ps, ds, addr, src, dst) for _ in range(reps))
    finally:
        for p in procs:
            p.close()
    nbytes = npages * page * shape["num_kv_heads"] * shape["head_dim"] * 2 * 2 * shape["num_layers"]
    return {"backend": backend, "p_tp": p_tp, "d_tp": d_tp, "bytes": nbytes, "seconds": best,
            "gbps": nbytes / best / 1e9}


def run_tp_pairs(backends: list[str], shapes: dict[str, dict[str, int]], model: str,
                 page: int, tokens: int, reps: int) -> dict[str, Any]:
    shape = shapes[model]
    print(f"KV handoff between TP sizes: {model} shape, bf16, page {page}, {tokens} tokens "
          f"contiguous, best of {reps}\n{'backend':8} {'P tp':>4} {'D tp':>4} {'MB':>8} "
          f"{'ms':>8} {'GB/s':>6} {'ratio':>6}  (ratio: GB/s over the tp1 -> tp1 pair's)",
          flush=True)
    out: dict[str, Any] = {"metric": "kv_transfer_tp_over_same_tp", "model": model,
                           "page": page, "tokens": tokens}
    for backend in backends:
        base = None
        for p_tp, d_tp in PAIRS:
            r = run_pair(backend, p_tp, d_tp, shape, page, tokens, reps)
            base = base or r["gbps"]
            ratio = r["gbps"] / base
            print(f"{backend:8} {p_tp:>4} {d_tp:>4} {r['bytes'] / 1e6:>8.1f} "
                  f"{r['seconds'] * 1e3:>8.2f} {r['gbps']:>6.2f} {ratio:>6.2f}", flush=True)
            out[f"{backend}/p{p_tp}d{d_tp}"] = {"gbps": round(r["gbps"], 3),
                                                "ratio": round(ratio, 3)}
    return out
