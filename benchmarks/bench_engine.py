"""The engine against ``transformers`` ``generate`` on the same model shape and machine, one run.

    python benchmarks/bench_engine.py [--preset smollm2-135m] [--dtype bfloat16] [--device cpu]

Workloads (the same for both, greedy, EOS ignored):
  prefill   one 512-token prompt, one new token           -> prompt tokens / s
  decode@1  one 128-token prompt, 32 new tokens           -> output tokens / s (end to end)
  decode@32 32 prompts of 128 tokens, 32 new tokens each  -> output tokens / s (end to end)
Prints both figures and the ratio engine / transformers for each. Targets: decode@32 >= 2x,
decode@1 and prefill >= 1x.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def model_dir(preset: str) -> str:
    from sglang.tools.create_model import create_model

    out = ROOT / "models" / f"{preset}-seed0"
    if not out.exists():
        tmp = out.with_name(out.name + ".partial")
        create_model(preset, tmp, seed=0)
        tmp.rename(out)
    return str(out)


def prompts(n: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(100, vocab) for _ in range(length)] for _ in range(n)]


WORKLOADS = [  # name, batch, prompt length, new tokens, what is counted
    ("prefill", 1, 512, 1, "prompt"),
    ("decode@1", 1, 128, 32, "output"),
    ("decode@32", 32, 128, 32, "output"),
]


def bench_engine(path: str, dtype: str, device: str, vocab: int, reps: int) -> dict[str, float]:
    from sglang import Engine

    eng = Engine(model_path=path, dtype=dtype, device=device, max_total_tokens=32768,
                 chunked_prefill_size=8192, max_running_requests=64)
    results = {}
    try:
        eng.generate(input_ids=prompts(2, 64, vocab, 0), sampling_params={"max_new_tokens": 4})
        for name, batch, plen, new, counted in WORKLOADS:
            rates = []
            for rep in range(reps):
                ids = prompts(batch, plen, vocab, seed=1000 * rep + batch)
                eng.flush_cache()
                sp = {"max_new_tokens": new, "temperature": 0, "ignore_eos": True}
                t0 = time.perf_counter()
                eng.generate(input_ids=ids if batch > 1 else ids[0], sampling_params=sp)
                dt = time.perf_counter() - t0
                rates.append(batch * (plen if counted == "prompt" else new) / dt)
            results[name] = statistics.median(rates)
    finally:
        eng.shutdown()
    return results


def bench_hf(path: str, dtype: str, device: str, vocab: int, reps: int) -> dict[str, float]:
    from transformers import AutoModelForCausalLM

    torch_dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16,
                   "float32": torch.float32}[dtype]
    model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch_dtype).to(device).eval()
    results = {}
    with torch.inference_mode():
        model.generate(torch.tensor(prompts(2, 64, vocab, 0), device=device), max_new_tokens=4,
                       do_sample=False)
        for name, batch, plen, new, counted in WORKLOADS:
            rates = []
            for rep in range(reps):
                ids = torch.tensor(prompts(batch, plen, vocab, seed=1000 * rep + batch),
                                   device=device)
                t0 = time.perf_counter()
                model.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                               pad_token_id=0)
                if device == "cuda":
                    torch.cuda.synchronize()
                dt = time.perf_counter() - t0
                rates.append(batch * (plen if counted == "prompt" else new) / dt)
            results[name] = statistics.median(rates)
    return results


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="smollm2-135m")
    ap.add_argument("--model-path", default=None)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    path = args.model_path or model_dir(args.preset)
    import json

    vocab = json.load(open(Path(path) / "config.json"))["vocab_size"]
    print(f"model {path} dtype {args.dtype} device {args.device} "
          f"threads {torch.get_num_threads()} reps {args.reps}", flush=True)
    eng = bench_engine(path, args.dtype, args.device, vocab, args.reps)
    hf = bench_hf(path, args.dtype, args.device, vocab, args.reps)
    targets = {"prefill": 1.0, "decode@1": 1.0, "decode@32": 2.0}
    print(f"\n{'workload':<11}{'engine tok/s':>14}{'transformers tok/s':>20}{'ratio':>8}"
          f"{'target':>8}")
    for name, *_ in WORKLOADS:
        ratio = eng[name] / hf[name]
        mark = "ok" if ratio >= targets[name] else "BELOW"
        print(f"{name:<11}{eng[name]:>14.1f}{hf[name]:>20.1f}{ratio:>7.2f}x"
              f"{targets[name]:>7.1f}x  {mark}")


if __name__ == "__main__":
    main()
