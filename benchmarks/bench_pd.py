"""PD disaggregation figures, measured side by side in one run.

    python benchmarks/bench_pd.py [--preset smollm2-135m] [--backend mooncake|nixl|both] [--quick]

1. KV handoff (1 prefill + 1 decode + mini_lb per backend, --page-size 16): for each prompt length,
   fresh random input_ids (no prefix-cache hit), streaming through mini_lb: TTFT (time to the
   first data chunk), KV bytes moved, transfer seconds, GB/s and the transfer's share of TTFT,
   read from the prefill's transfer totals (GET /get_server_info) before and after each request.
   Each prompt then goes to a unified server (up, idle, all along): its TTFT is the baseline.
2. Why PD: one long streaming generation while long prompts arrive; its inter-token latency
   (ITL, SGLang bench_serving convention: a chunk of k tokens after a gap g counts k gaps of g/k)
   on a unified server and on a 1P1D cluster, same model and flags. The stream length and the
   gap between long prompts are calibrated on the unified server (each long prompt arrives 1.5
   prefill-times after the previous one; the stream outlasts them all).

Every server process gets SGLANG_CPU_THREADS=1 (--threads): with torch's default 2 threads per
process on 2 shared cores, OpenMP oversubscription made decode about 5x slower here.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import requests

from sglang.test.server_utils import PDCluster, Proc, launch_pd_cluster, launch_server

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 600


def model_dir(preset: str) -> str:
    from sglang.tools.create_model import cached_model

    return cached_model(preset, ROOT / "models")


class Prompts:
    """Fresh random prompts: every call gives ids never sent before (no prefix-cache hit)."""

    def __init__(self, vocab: int, seed: int = 0):
        self.vocab, self.rng = vocab, random.Random(seed)

    def __call__(self, n: int) -> list[int]:
        return [self.rng.randrange(100, self.vocab) for _ in range(n)]


@dataclass
class Stream:
    """One streamed response: when it was sent and when each data chunk arrived."""

    t0: float = 0.0
    chunks: list[tuple[float, int]] = field(default_factory=list)  # (time, new tokens)

    @property
    def ttft(self) -> float:
        return self.chunks[0][0] - self.t0

    def itl(self) -> list[float]:
        gaps: list[float] = []
        for (t_prev, _), (t, k) in zip(self.chunks, self.chunks[1:]):
            gaps += [(t - t_prev) / max(k, 1)] * max(k, 1)
        return gaps


def generate(url: str, ids: list[int], max_new: int, out: Optional[Stream] = None) -> Stream:
    """Streaming POST /generate; records the arrival time of every data chunk."""
    s = out if out is not None else Stream()
    body = {"input_ids": ids, "stream": True, "sampling_params": {
        "max_new_tokens": max_new, "temperature": 0, "ignore_eos": True}}
    s.t0 = time.perf_counter()
    seen = 0
    with requests.post(url + "/generate", json=body, stream=True, timeout=TIMEOUT) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                break
            now, obj = time.perf_counter(), json.loads(payload)
            if "error" in obj:
                raise RuntimeError(f"stream error: {obj['error']}")
            n = len(obj.get("output_ids") or [])
            s.chunks.append((now, n - seen))
            seen = n
    if not s.chunks:
        raise RuntimeError("the stream ended without a data chunk")
    return s


def server_info(p: Proc) -> dict[str, Any]:
    return requests.get(p.url + "/get_server_info", timeout=30).json()


def transfer_totals(p: Proc, at_least: int = 0, wait: float = 10.0) -> dict[str, Any]:
    """The prefill's transfer totals, once they count ``at_least`` transfers: the prefill records
    a transfer on its next scheduler step, which may come after the decode already answered."""
    deadline = time.time() + wait
    while True:
        t = server_info(p)["internal_states"][0]["disaggregation"]["transfer"]
        if t["transfers"] >= at_least or time.time() > deadline:
            return t
        time.sleep(0.005)


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))] if xs else 0.0


# ---- 1. KV handoff ------------------------------------------------------------------------
def kv_handoff(cluster: PDCluster, unified: str, lengths: list[int], reps: int,
               fresh: Prompts) -> tuple[list[dict], dict[str, Any]]:
    """Rows per request, and the very first transfer (it opens the engine's connections). Each
    prompt also goes to the unified server right after, for a side-by-side TTFT."""
    prefill, rows = cluster.prefills[0], []
    s = generate(cluster.url, fresh(32), 2)
    first = {**transfer_totals(prefill, 1), "ttft": s.ttft}
    for n in lengths:  # warm-up at each shape
        generate(cluster.url, fresh(n), 2)
        generate(unified, fresh(n), 2)
    transfer_totals(prefill, 1 + len(lengths))
    for n in lengths:
        for _ in range(reps):
            ids = fresh(n)
            before = transfer_totals(prefill)
            s = generate(cluster.url, ids, 2)
            after = transfer_totals(prefill, before["transfers"] + 1)
            d = {k: after[k] - before[k] for k in ("transfers", "bytes", "blocks", "seconds")}
            rows.append({"len": n, "ttft": s.ttft, "unif": generate(unified, ids, 2).ttft, **d})
    return rows, first


def print_handoff(backend: str, rows: list[dict], first: dict[str, Any]) -> dict[str, Any]:
    """Prints the table; returns its medians per prompt length for the JSON line."""
    summary: dict[str, Any] = {}
    lengths = sorted({r["len"] for r in rows})
    print(f"\n[KV handoff] backend={backend}, 1P1D via mini_lb (unified server: same prompt "
          f"just after), medians of {len(rows) // len(lengths)} fresh prompts per length")
    print(f"{'prompt':>7}{'TTFT ms':>9}{'unif ms':>9}{'KV bytes':>11}{'blocks':>7}"
          f"{'xfer ms':>9}{'GB/s':>7}{'xfer/TTFT':>10}")
    for n in lengths:
        rs = [r for r in rows if r["len"] == n]
        med = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
        gbs = med["bytes"] / med["seconds"] / 1e9 if med["seconds"] > 0 else 0.0
        ok = all(r["transfers"] == 1 for r in rs)
        print(f"{n:>7}{med['ttft'] * 1e3:>9.1f}{med['unif'] * 1e3:>9.1f}{int(med['bytes']):>11}"
              f"{int(med['blocks']):>7}{med['seconds'] * 1e3:>9.2f}{gbs:>7.3f}"
              f"{med['seconds'] / med['ttft'] * 100:>9.1f}%" + ("" if ok else "  (!) counts"))
        summary[str(n)] = {"ttft_ms": round(med["ttft"] * 1e3, 2),
                           "unified_ttft_ms": round(med["unif"] * 1e3, 2),
                           "bytes": int(med["bytes"]), "xfer_ms": round(med["seconds"] * 1e3, 3),
                           "gbps": round(gbs, 3)}
    print(f"  first transfer of the cluster (32 tokens, opens connections): "
          f"{first['seconds'] * 1e3:.1f} ms for {first['bytes']} bytes, TTFT "
          f"{first['ttft'] * 1e3:.1f} ms")
    ms = ", ".join(f"{r['seconds'] * 1e3:.1f}" for r in rows)
    print(f"  per-request transfer ms, in order: {ms}")
    return summary


# ---- 2. Why PD ----------------------------------------------------------------------------
QUIET = 20  # chunks streamed before the first long prompt: the stream's undisturbed ITL


def calibrate(url: str, prompts: Prompts, long_len: int, n_long: int,
              min_tokens: int) -> tuple[int, float]:
    """(stream tokens, seconds between long prompts) from the unified server's own speed:
    long prompts arrive 1.5 prefill-times apart, and the stream outlasts them all."""
    ttfts = [generate(url, prompts(long_len), 1).ttft for _ in range(2)]  # 1st: warm-up
    itl = statistics.median(generate(url, prompts(64), QUIET).itl())
    interval = 1.5 * ttfts[-1]
    need = QUIET + 1.5 * (n_long * interval + ttfts[-1]) / max(itl, 1e-4)
    print(f"calibrated on the unified server: {long_len}-token TTFT {ttfts[-1] * 1e3:.0f} ms, "
          f"quiet ITL {itl * 1e3:.1f} ms", flush=True)
    return max(min_tokens, min(int(need), 3000)), interval


def itl_under_load(url: str, prompts: Prompts, new_tokens: int, long_len: int, n_long: int,
                   interval: float, prefill: Optional[Proc] = None) -> dict[str, Any]:
    generate(url, prompts(long_len), 1)  # warm-up at the long shape
    stream, errors = Stream(), []

    def run_stream() -> None:
        try:
            generate(url, prompts(64), new_tokens, stream)
        except Exception as e:  # reported below
            errors.append(e)

    th = threading.Thread(target=run_stream, daemon=True)
    th.start()
    deadline = time.time() + TIMEOUT
    while len(stream.chunks) < QUIET and th.is_alive() and time.time() < deadline:
        time.sleep(0.01)
    before = transfer_totals(prefill) if prefill else None
    longs = [Stream() for _ in range(n_long)]
    threads = [threading.Thread(target=generate, args=(url, prompts(long_len), 1, s), daemon=True)
               for s in longs]
    for t in threads:
        t.start()
        time.sleep(interval)
    for t in threads + [th]:
        t.join(TIMEOUT)
    if errors or not all(s.chunks for s in longs):
        raise RuntimeError(f"Why-PD run failed: {errors or 'a long prompt got no answer'}")
    itl = stream.itl()
    quiet = Stream(stream.t0, stream.chunks[:QUIET]).itl()
    r = {"quiet": statistics.mean(quiet), "mean": statistics.mean(itl), "p50": pct(itl, 50),
         "p99": pct(itl, 99), "max": max(itl), "total": stream.chunks[-1][0] - stream.t0,
         "long_ttft": statistics.mean(s.ttft for s in longs), "xfer": None}
    if prefill and before:
        after = transfer_totals(prefill, before["transfers"] + n_long)
        n = after["transfers"] - before["transfers"]
        r["xfer"] = (after["seconds"] - before["seconds"]) / max(n, 1)
    return r


def print_itl(results: dict[str, dict[str, Any]], new_tokens: int, n_long: int,
              long_len: int, interval: float, threads: int) -> None:
    print(f"\n[Why PD] ITL (ms) of one {new_tokens}-token stream; after {QUIET} tokens, "
          f"{n_long} x {long_len}-token prompts arrive {interval:.2f} s apart")
    print(f"{'setup':<15}{'quiet mean':>11}{'mean':>7}{'p50':>7}{'p99':>8}{'max':>8}"
          f"{'stream s':>9}{'long TTFT':>10}{'long xfer':>10}")
    for name, r in results.items():
        xfer = f"{r['xfer'] * 1e3:>10.1f}" if r["xfer"] is not None else f"{'-':>10}"
        ms = {k: r[k] * 1e3 for k in ("quiet", "mean", "p50", "p99", "max", "long_ttft")}
        print(f"{name:<15}{ms['quiet']:>11.1f}{ms['mean']:>7.1f}{ms['p50']:>7.1f}"
              f"{ms['p99']:>8.1f}{ms['max']:>8.1f}{r['total']:>9.2f}{ms['long_ttft']:>10.1f}{xfer}")
    u = results.get("unified")
    for name, r in results.items():
        if u is not None and r is not u:
            print(f"unified / {name}: " + ", ".join(
                f"{k} {u[k] / r[k]:.2f}x" for k in ("mean", "p50", "p99", "max") if r[k] > 0))
    print("caveat: prefill and decode share this machine's 2 CPU cores (and other work), so a "
          "prefill still\nslows the decode process through CPU contention even though it no "
          "longer stalls its batch;\nwith separate GPUs the difference is larger. Each engine "
          f"process has {threads or 'default'} torch thread(s):\n"
          "1P1D runs two engines where unified runs one (as 2 GPUs against 1).")


# ---- main ---------------------------------------------------------------------------------
def stop_own_children() -> None:
    """A server whose launch was interrupted was never returned to us: stop every process this
    script started (its direct children, each the leader of its own session) by pid."""
    me = str(os.getpid())
    for d in Path("/proc").glob("[0-9]*"):
        try:
            if (d / "stat").read_text().rsplit(")", 1)[1].split()[1] == me:
                os.killpg(int(d.name), signal.SIGTERM)
        except (OSError, IndexError, ValueError):
            pass


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default=None, help="default smollm2-135m (tiny with --quick)")
    ap.add_argument("--model-path", default=None)
    ap.add_argument("--backend", default="both", choices=["mooncake", "nixl", "both"])
    ap.add_argument("--quick", action="store_true", help="tiny model, shorter prompts and stream")
    ap.add_argument("--reps", type=int, default=None, help="fresh prompts per length")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads per server process (SGLANG_CPU_THREADS; 0 = torch default)")
    args = ap.parse_args()
    preset = args.preset or ("tiny" if args.quick else "smollm2-135m")
    path = args.model_path or model_dir(preset)
    vocab = json.load(open(Path(path) / "config.json"))["vocab_size"]
    lengths = [128, 512, 1024] if args.quick else [128, 512, 2048]
    reps = args.reps or (2 if args.quick else 3)
    min_tokens, n_long, long_len = (100, 3, 1024) if args.quick else (200, 3, 1024)
    backends = ["mooncake", "nixl"] if args.backend == "both" else [args.backend]
    flags = ["--page-size", "16", "--max-total-tokens", "32768"]
    env = {"SGLANG_CPU_THREADS": str(args.threads)}
    log_dir = tempfile.mkdtemp(prefix="sglang-bench-pd-")
    prompts = Prompts(vocab)
    print(f"model {path}\nbackends {backends}, flags {' '.join(flags)}, SGLANG_CPU_THREADS="
          f"{args.threads} per server process; logs in {log_dir}", flush=True)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM cleans up as Ctrl-C
    t_start = time.time()
    handoff: dict[str, Any] = {}
    itl: dict[str, dict[str, Any]] = {}
    live: list[Any] = []  # every server or cluster still running, stopped in finally
    try:
        unified = launch_server(path, log_dir, "unified", flags, env)
        live.append(unified)
        info = server_info(unified)
        print(f"KV bytes/token: {info['kv_bytes_per_token']} ({info['dtype']}; a 16-token page "
              f"= {info['kv_bytes_per_token'] * 16} bytes)", flush=True)
        new_tokens, interval = calibrate(unified.url, prompts, long_len, n_long, min_tokens)
        itl["unified"] = itl_under_load(unified.url, prompts, new_tokens, long_len, n_long,
                                        interval)
        for backend in backends:  # the unified server stays up, idle, for side-by-side TTFT
            cluster = launch_pd_cluster(path, f"{log_dir}/{backend}", backend, args=flags,
                                        env=env)
            live.append(cluster)
            handoff[backend] = print_handoff(
                backend, *kv_handoff(cluster, unified.url, lengths, reps, prompts))
            itl[f"1P1D {backend}"] = itl_under_load(cluster.url, prompts, new_tokens, long_len,
                                                   n_long, interval, cluster.prefills[0])
            cluster.stop()
        print_itl(itl, new_tokens, n_long, long_len, interval, args.threads)
    except KeyboardInterrupt:
        print("\ninterrupted", flush=True)
    finally:
        for x in live:
            x.stop()  # idempotent: a stopped process is skipped
        stop_own_children()
    print(f"\ntotal {time.time() - t_start:.0f} s", flush=True)
    itl_ms = {name: {k: round(r[k] * 1e3, 2) for k in ("mean", "p50", "p99", "max")}
              for name, r in itl.items()}
    print(json.dumps({"metric": "bench_pd", "kv_handoff": handoff, "itl_ms": itl_ms,
                      "wall_s": round(time.time() - t_start, 1)}), flush=True)


if __name__ == "__main__":
    main()
