"""The engine against ``transformers`` ``generate`` on the same model shape and machine, one run.

    python benchmarks/bench_engine.py [--preset smollm2-135m] [--dtype bfloat16] [--device cpu]
                                      [--reps 5] [--threads N]

Workloads (the same for both, greedy, EOS ignored):
  prefill   one 512-token prompt, one new token               -> prompt tokens / s
  decode@1  one 128-token prompt, 32 new tokens               -> decode tokens / s
  decode@32 32 prompts of 128 tokens, 32 new tokens each      -> decode tokens / s
Decode throughput counts the tokens after the first and the time after the prefill:
B * (N - 1) / (t(N new tokens) - t(1 new token)), measured the same way for both. End-to-end
output tokens / s (prefill included) is printed beside it. Both engines are loaded side by side and
every rep runs the workload on one then the other, so that the drifting speed of a shared machine
hits both; printed are each one's median rate and the median of the per-rep ratios
engine / transformers. Targets: decode@32 >= 2x, decode@1 and prefill >= 1x.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import time
from pathlib import Path

# Both engines run under the server's OpenMP wait policy, PASSIVE (idle threads sleep; every
# parallel op pays a wake-up). libgomp reads it when torch loads, hence before the import; the
# engine's scheduler process inherits it. (With ACTIVE the idle side's threads would spin
# against the working side's on a small machine.)
os.environ["OMP_WAIT_POLICY"] = "PASSIVE"

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def model_dir(preset: str) -> str:
    from sglang.tools.create_model import cached_model

    return cached_model(preset, ROOT / "models")


def prompts(n: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(100, vocab) for _ in range(length)] for _ in range(n)]


WORKLOADS = [  # name, batch, prompt length, new tokens
    ("prefill", 1, 512, 1),
    ("decode@1", 1, 128, 32),
    ("decode@32", 32, 128, 32),
]


def rates(name: str, batch: int, plen: int, new: int, t_first: float, t_all: float
          ) -> dict[str, float]:
    """Decode rate from two runs of the same prompts: ``t_first`` (prompt and first token) and
    ``t_all`` (all ``new`` tokens). When the machine slowed down during the first run so much
    that it took as long as the whole second one, the difference measures nothing: the rate is
    NaN and ``bench`` leaves that rep out (it printed 1e12 tok/s before)."""
    if name == "prefill":
        return {name: batch * plen / t_first}
    decode = t_all - t_first
    return {name: batch * (new - 1) / decode if decode > 0.05 * t_all else math.nan,
            name + " e2e": batch * new / t_all}


class EngineRunner:
    """The engine under test (its scheduler is a separate process, as in a server)."""

    name = "engine"

    def __init__(self, path: str, dtype: str, device: str):
        from sglang import Engine

        self.eng = Engine(model_path=path, dtype=dtype, device=device, max_total_tokens=32768,
                          chunked_prefill_size=8192, max_running_requests=64)

    def run(self, ids: list[list[int]], n: int) -> float:
        self.eng.flush_cache()  # no prefix-cache hits between runs
        sp = {"max_new_tokens": n, "temperature": 0, "ignore_eos": True}
        t0 = time.perf_counter()
        self.eng.generate(input_ids=ids if len(ids) > 1 else ids[0], sampling_params=sp)
        return time.perf_counter() - t0

    def close(self) -> None:
        self.eng.shutdown()


class HFRunner:
    """``transformers`` ``generate`` in this process."""

    name = "transformers"

    def __init__(self, path: str, dtype: str, device: str):
        from transformers import AutoModelForCausalLM

        torch_dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16,
                       "float32": torch.float32}[dtype]
        self.device = device
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
        self.model = self.model.to(device).eval()

    def run(self, ids: list[list[int]], n: int) -> float:
        x = torch.tensor(ids, device=self.device)
        with torch.inference_mode():
            t0 = time.perf_counter()
            self.model.generate(x, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                pad_token_id=0)
            if self.device == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter() - t0

    def close(self) -> None:
        pass


def bench(runners: list, vocab: int, reps: int) -> tuple[dict, dict]:
    """Every rep runs each workload on every runner in turn (same prompts), so slow phases of a
    shared machine hit both. Returns per runner {metric: median rate} and {metric: median of the
    per-rep ratios runners[0] / runners[1]}."""
    for r in runners:  # warm-up
        r.run(prompts(2, 64, vocab, 0), 4)
    rates_by = {r.name: {} for r in runners}
    ratios: dict[str, list[float]] = {}
    for name, batch, plen, new in WORKLOADS:
        for rep in range(reps):
            ids = prompts(batch, plen, vocab, seed=1000 * rep + batch)
            got = [rates(name, batch, plen, new, r.run(ids, 1), r.run(ids, new)) for r in runners]
            if any(math.isnan(v) for g in got for v in g.values()):
                print(f"  {name} rep {rep}: left out (a first-token run took as long as the "
                      "whole generation: the machine slowed down)", flush=True)
                continue
            for r, g in zip(runners, got):
                for key, v in g.items():
                    rates_by[r.name].setdefault(key, []).append(v)
            for key in got[0]:
                ratios.setdefault(key, []).append(got[0][key] / got[1][key])
            print(f"  {name} rep {rep}: " + ", ".join(
                f"{r.name} {g[name]:.1f} tok/s" for r, g in zip(runners, got)), flush=True)
    med = {n: {k: statistics.median(v) for k, v in m.items() if v} for n, m in rates_by.items()}
    return med, {k: statistics.median(v) for k, v in ratios.items() if v}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="smollm2-135m")
    ap.add_argument("--model-path", default=None)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--reps", type=int, default=None, help="default 5 (2 with --quick)")
    ap.add_argument("--quick", action="store_true",
                    help="CI smoke run: the tiny model, 2 reps (checks that it runs; its ratios "
                         "mean little)")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch CPU threads for both (0: torch's default)")
    args = ap.parse_args()
    if args.quick and args.preset == "smollm2-135m" and not args.model_path:
        args.preset = "tiny"
    args.reps = args.reps or (2 if args.quick else 5)
    if args.threads:
        os.environ["SGLANG_CPU_THREADS"] = str(args.threads)  # the engine's scheduler process
        torch.set_num_threads(args.threads)  # transformers, in this process
    path = args.model_path or model_dir(args.preset)
    vocab = json.load(open(Path(path) / "config.json"))["vocab_size"]
    print(f"model {path} dtype {args.dtype} device {args.device} "
          f"threads {torch.get_num_threads()} OMP_WAIT_POLICY {os.environ['OMP_WAIT_POLICY']} "
          f"reps {args.reps}", flush=True)
    runners = [EngineRunner(path, args.dtype, args.device)]
    try:
        runners.append(HFRunner(path, args.dtype, args.device))
        med, ratios = bench(runners, vocab, args.reps)
    finally:
        for r in runners:
            r.close()
    eng, hf = med["engine"], med["transformers"]
    targets = {"prefill": 1.0, "decode@1": 1.0, "decode@32": 2.0}
    print(f"\n{'workload':<15}{'engine tok/s':>14}{'transformers tok/s':>20}{'ratio':>8}"
          f"{'target':>8}")
    for name in eng:
        ratio = ratios[name]
        target = targets.get(name)
        mark = "" if target is None else ("ok" if ratio >= target else "BELOW")
        tgt = f"{target:>7.1f}x" if target else " " * 8
        print(f"{name:<15}{eng[name]:>14.1f}{hf[name]:>20.1f}{ratio:>7.2f}x{tgt}  {mark}")
    print(json.dumps({"metric": "engine_over_transformers", "model": path, "dtype": args.dtype,
                      "device": args.device, **{
                          name: {"engine_tok_s": round(eng[name], 2),
                                 "transformers_tok_s": round(hf[name], 2),
                                 "ratio": round(ratios[name], 3)} for name in eng}}), flush=True)


if __name__ == "__main__":
    main()
