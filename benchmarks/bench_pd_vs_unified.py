"""A unified server against a 1P1D cluster (mini_lb, Mooncake) under the same mixed load, same
model and same CPU budget, measured side by side in one run; plots the ITL distributions.

    python benchmarks/bench_pd_vs_unified.py [--quick] [--rates 0.5 1 2] [--duration 30]
        [--unified-threads 2] [--pd-threads 1] [--no-pin] [--plot FILE] [--preset P]

1. Load: per request rate, a Poisson stream of chat-length requests plus a few long prompts,
   both driven by ``sglang.bench_serving`` (two runs side by side: ``random`` chat requests
   at the rate, and the long prompts at ``n_long / duration``), first on the unified server, then
   on the cluster, with the same seeds. Reported: TTFT and ITL p50/p90/p99/max, output tokens/s,
   PD/unified ratios, the target (p99 ITL <= 0.5x at >= 0.8x throughput) and how busy each
   engine's CPUs were (CPU seconds of its process tree / wall seconds).
2. Stall check (pd_stall_check.py): one lone stream on the cluster's decode; long prompts then
   prefill, one after another, and their KV is written into the decode chunk by chunk
   (``--chunked-prefill-size``) while the stream runs. Its ITL while a long prompt is in flight
   (sent, first token not yet back) over its ITL without: the transfer must not stall the
   decode's steps (<= 1.10); also the decode's CPU seconds per token in and out.

CPU budget: the unified server gets every core of this process's affinity set and
SGLANG_CPU_THREADS=--unified-threads; the prefill gets the first half of the cores, the decode
the second half, each with --pd-threads (pinned through the launching thread's affinity, which
children inherit). The client and mini_lb are not pinned. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Optional


sys.path.insert(0, str(Path(__file__).resolve().parent))
import pd_vs_unified_report as rep  # noqa: E402
from pd_stall_check import cpu_seconds, stall_check  # noqa: E402
from bench_pd import Prompts, model_dir, stop_own_children  # noqa: E402

from sglang.test.server_utils import launch_pd_cluster, launch_server  # noqa: E402

QUICK = dict(preset="tiny", rates=[2.0, 6.0], duration=5.0, chat_in=128, chat_out=64,
             long_len=1024, n_long=2, stream_tokens=3000, stall_longs=4)
FULL = dict(preset="smollm2-135m", rates=[0.5, 1.0, 2.0], duration=30.0, chat_in=256,
            chat_out=128, long_len=2048, n_long=3, stream_tokens=4000, stall_longs=3)
FLAGS = ["--page-size", "16", "--max-total-tokens", "32768", "--chunked-prefill-size", "512"]


@contextlib.contextmanager
def pinned(cpus: Optional[set[int]]) -> Iterator[None]:
    """Processes started inside inherit this thread's CPU affinity."""
    if not cpus:
        yield
        return
    old = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, old)


def bench_serving(url: str, **kw: Any) -> dict[str, Any]:
    """One ``sglang.bench_serving`` run (its library entry) with per-request details."""
    from sglang.bench_serving import run_benchmark
    from sglang.bench_serving.args import make_args

    ns = make_args(backend="sglang", base_url=url, dataset_name="random",
                   output_details=True, disable_tqdm=True, warmup_requests=0, **kw)
    return run_benchmark(ns)


def prompt_file(path: str, n: int, words: int, seed: int) -> str:
    """A ShareGPT-format file of ``n`` conversations of ``words`` random lowercase words each: the
    prompts bench_serving's ``random`` dataset truncates to each request's length. One file per
    rate and kind, the same for both sides: no prompt repeats, so no prefix-cache hits (the
    packaged corpus has 51 conversations, and repeats would hit the radix cache)."""
    import random

    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"

    def text() -> str:
        return " ".join("".join(rng.choices(letters, k=rng.randint(3, 8))) for _ in range(words))

    data = [{"conversations": [{"from": "human", "value": text()},
                               {"from": "gpt", "value": "ok"}]} for _ in range(n)]
    Path(path).write_text(json.dumps(data))
    return path


def mixed_load(url: str, rate: float, c: dict, seed: int, pd: bool, log: str) -> dict[str, Any]:
    """Chat-length Poisson requests at ``rate`` plus ``n_long`` long prompts spread over the same
    duration, as two bench_serving runs side by side; merged into one summary. bench_serving's
    printout goes to ``log`` + ``.txt``, its JSONL lines to ``log`` + ``.jsonl``."""
    from transformers import AutoTokenizer  # noqa: F401  (import once, not in two threads)

    common = dict(pd_separated=pd, tokenizer=c["model_path"], output_file=log + ".jsonl")
    n_chat, d = max(1, round(rate * c["duration"])), os.path.dirname(log)
    runs = {
        "chat": dict(num_prompts=n_chat, request_rate=rate, random_input_len=c["chat_in"],
                     random_output_len=c["chat_out"], random_range_ratio=0.25, seed=seed,
                     dataset_path=prompt_file(f"{d}/prompts_{seed}_chat.json", n_chat,
                                              c["chat_in"], seed)),
        "long": dict(num_prompts=c["n_long"], request_rate=c["n_long"] / c["duration"],
                     random_input_len=c["long_len"], random_output_len=16,
                     random_range_ratio=1.0, seed=seed + 1,
                     dataset_path=prompt_file(f"{d}/prompts_{seed}_long.json", c["n_long"],
                                              c["long_len"], seed + 1)),
    }
    out: dict[str, Any] = {}
    errors: list[BaseException] = []

    def go(name: str) -> None:
        try:
            out[name] = bench_serving(url, **common, **runs[name])
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=go, args=(n,), daemon=True) for n in runs]
    with open(log + ".txt", "a") as f, contextlib.redirect_stdout(f):
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    if errors:
        raise RuntimeError(f"bench_serving failed: {errors[0]!r}") from errors[0]
    return rep.merge_bench_results([out["chat"], out["long"]])


def print_table(rates: list[float], runs: dict, cpu: dict) -> None:
    print("\n[Load] TTFT and ITL (ms), output tokens/s; ratios PD / unified")
    hdr = ["rate", "side", "done", "TTFT p50", "p90", "p99", "max", "ITL p50", "p90", "p99",
           "max", "tok/s"]
    print("".join(f"{h:>9}" for h in hdr) + f"{'CPU busy':>11}")
    for rate in rates:
        for side in ("unified", "pd"):
            r = runs[(side, rate)]
            ms = [r[m][k] * 1e3 for m in ("ttft", "itl") for k in ("p50", "p90", "p99", "max")]
            print(f"{rate:>9g}{side:>9}{r['completed']:>9}" + "".join(f"{x:>9.1f}" for x in ms)
                  + f"{r['output_throughput']:>9.1f}{r['cpu_busy']:>11}")
        ra = rep.ratios(runs[("pd", rate)], runs[("unified", rate)])
        v = rep.verdict(ra)
        print(f"{'':>9}{'PD/unif':>9}{'':>9}" + "".join(
            f"{ra[f'{m}_{k}']:>8.2f}x" for m in ("ttft", "itl") for k in ("p50", "p90", "p99", "max"))
            + f"{ra['output_throughput']:>8.2f}x   target (ITL p99<=0.5x, tok/s>=0.8x): "
            + ("met" if v["met"] else "NOT met"))
    print(f"CPU busy = CPU seconds of a server's processes / wall seconds of the run (PD: "
          f"prefill+decode); cores: "
          f"unified {cpu['unified']}, prefill {cpu['prefill']}, decode {cpu['decode']}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="tiny model, short runs (~1 minute)")
    ap.add_argument("--preset", default=None)
    ap.add_argument("--model-path", default=None)
    ap.add_argument("--rates", type=float, nargs="+", default=None)
    ap.add_argument("--duration", type=float, default=None, help="seconds of arrivals per rate")
    ap.add_argument("--unified-threads", type=int, default=2)
    ap.add_argument("--pd-threads", type=int, default=1)
    ap.add_argument("--no-pin", action="store_true", help="do not pin the servers to cores")
    ap.add_argument("--backend", default="mooncake", choices=["mooncake", "nixl"])
    ap.add_argument("--plot", default=None, help="PNG path (default: in the log folder)")
    args = ap.parse_args()
    c = dict(QUICK if args.quick else FULL)
    for k in ("preset", "rates", "duration"):
        if getattr(args, k) is not None:
            c[k] = getattr(args, k)
    path = c["model_path"] = args.model_path or model_dir(c["preset"])
    vocab = json.load(open(Path(path) / "config.json"))["vocab_size"]
    log_dir = tempfile.mkdtemp(prefix="sglang-bench-pd-vs-unified-")
    cores = sorted(os.sched_getaffinity(0))
    half = max(1, len(cores) // 2)
    pin = not args.no_pin and len(cores) >= 2
    sets = {"unified": set(cores), "prefill": set(cores[:half]), "decode": set(cores[half:])}
    cpu = {k: (f"{sorted(v)} x{args.unified_threads if k == 'unified' else args.pd_threads}t"
               if pin else f"unpinned x{args.unified_threads if k == 'unified' else args.pd_threads}t")
           for k, v in sets.items()}
    print(f"model {path}; flags {' '.join(FLAGS)}; backend {args.backend}; logs in {log_dir}\n"
          f"CPU split ({len(cores)} cores {cores}): unified pinned to {sorted(sets['unified'])} "
          f"with SGLANG_CPU_THREADS={args.unified_threads}; prefill {sorted(sets['prefill'])} and "
          f"decode {sorted(sets['decode'])} with {args.pd_threads} each"
          + ("" if pin else " (not pinned)") + f"; load average {os.getloadavg()[0]:.2f}",
          flush=True)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    t_start, live, runs = time.time(), [], {}
    stall: dict[str, Any] = {"median_ratio": float("nan")}
    try:
        u_env = {"SGLANG_CPU_THREADS": str(args.unified_threads)}
        p_env = {"SGLANG_CPU_THREADS": str(args.pd_threads)}
        with pinned(sets["unified"] if pin else None):
            unified = launch_server(path, log_dir, "unified", FLAGS, u_env)
        live.append(unified)
        cluster = _launch_pinned_cluster(path, log_dir, args.backend, p_env,
                                         sets if pin else {})
        live.append(cluster)
        sides = {"unified": (unified.url, [unified], False),
                 "pd": (cluster.url, cluster.prefills + cluster.decodes, True)}
        for i, rate in enumerate(c["rates"]):
            for side, (url, procs, pd) in sides.items():
                cpu0, w0 = [cpu_seconds([p]) for p in procs], time.perf_counter()
                r = mixed_load(url, rate, c, 100 + i, pd, f"{log_dir}/bench_serving_{side}")
                wall = time.perf_counter() - w0
                r["cpu_busy"] = "+".join(f"{(cpu_seconds([p]) - c0) / wall:.2f}"
                                         for p, c0 in zip(procs, cpu0))
                runs[(side, rate)] = r
                print(f"rate {rate:g} {side}: {r['completed']} done, {r['failed']} failed, "
                      f"{r['output_throughput']:.1f} tok/s, ITL p99 {r['itl']['p99'] * 1e3:.1f} "
                      f"ms, CPU busy {r['cpu_busy']} cores", flush=True)
        print_table(c["rates"], runs, cpu)
        stall = stall_check(cluster.url, Prompts(vocab, seed=7), c, cluster.decodes[0])
        print(f"\n[Stall check] lone stream on the decode; {c['stall_longs']} x {c['long_len']}"
              f"-token prompts prefilled and transferred in, one at a time (window "
              f"{stall['window_ms']:.0f} ms each)\n  ITL median quiet {stall['quiet_median'] * 1e3:.2f}"
              f" ms ({stall['quiet_n']} gaps), in flight {stall['busy_median'] * 1e3:.2f} ms "
              f"({stall['busy_n']} gaps): ratio {stall['median_ratio']:.3f} (mean ratio "
              f"{stall['mean_ratio']:.3f}); target <= 1.10: "
              + ("met" if stall["median_ratio"] <= 1.10 else "NOT met")
              + f"\n  decode CPU per streamed token: quiet {stall['cpu_ms_per_token_quiet']:.2f} ms,"
              f" in flight {stall['cpu_ms_per_token_busy']:.2f} ms: ratio {stall['cpu_ratio']:.3f}"
              " (work the transfers add to the decode process; the rest of the ITL ratio is "
              "waiting for a core)" + ("\n  (!) the stream ended before the last window closed"
                                       if stall["stream_ended_early"] else ""), flush=True)
    except KeyboardInterrupt:
        print("\ninterrupted", flush=True)
    finally:
        for x in live:
            x.stop()
        stop_own_children()
    if len(runs) < 2 * len(c["rates"]):
        sys.exit(1)
    png = args.plot or os.path.join(log_dir, "pd_vs_unified.png")
    rep.plot(c["rates"], runs, png, f"{c['preset']}: unified ({cpu['unified']}) vs 1P1D "
             f"(prefill {cpu['prefill']}, decode {cpu['decode']}), {args.backend}")
    print(f"\ntotal {time.time() - t_start:.0f} s; plot written to {png}", flush=True)
    print(json.dumps(rep.headline(c["rates"], runs, stall, cpu)), flush=True)


def _launch_pinned_cluster(path: str, log_dir: str, backend: str, env: dict,
                           sets: dict[str, set[int]]):
    """launch_pd_cluster with prefill0 pinned to ``sets["prefill"]`` and decode0 to
    ``sets["decode"]`` (its launch_server wrapped to run under that affinity); mini_lb free."""
    import sglang.test.server_utils as su

    orig = su.launch_server

    def wrapped(model_path, log_dir_, name="server", args=None, env=None):
        with pinned(sets.get(name.rstrip("0123456789"))):
            return orig(model_path, log_dir_, name, args, env)

    su.launch_server = wrapped
    try:
        return launch_pd_cluster(path, f"{log_dir}/pd", backend, args=FLAGS, env=env)
    finally:
        su.launch_server = orig


if __name__ == "__main__":
    main()
