"""The Python half of benchmarks/gpu_check.sh: the checks a GPU day runs, each printing one JSON
line last (also usable on CPU with the tiny model, as ``gpu_check.sh --dry-run`` does).

    python benchmarks/gpu_check.py compare  [--device cuda] [--preset qwen3-0.6b]
                                            [--backends nixl mooncake_tcp]
    python benchmarks/gpu_check.py roofline [--preset qwen3-0.6b] [--hbm-tb-s 4.8]

compare: a unified server and, per transfer backend, a 1P1D cluster behind mini_lb (prefill and
decode on the same device; on CUDA the KV pages live in VRAM, which NIXL and Mooncake register),
greedy ``/generate`` of the same random prompts: every output's token ids must equal the unified
server's. Exit status 1 on any difference.
roofline: in-process ``sglang.Engine`` decode tokens/s at batch 1 and 32 (128-token prompts, 32
new tokens, B*(N-1)/(t(N)-t(1)) as bench_engine.py) against the HBM roofline: a decode step
reads every weight once plus the batch's KV, so tokens/s <= B * bandwidth / (weight bytes +
B * context * KV bytes per token).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pd import model_dir, stop_own_children  # noqa: E402

from sglang.test.server_utils import launch_pd_cluster, launch_server  # noqa: E402


def greedy(url: str, prompts: list[list[int]], n: int) -> list[list[int]]:
    out = []
    for ids in prompts:
        body = {"input_ids": ids, "sampling_params": {"max_new_tokens": n, "temperature": 0,
                                                      "ignore_eos": True}}
        r = requests.post(url + "/generate", json=body, timeout=300)
        r.raise_for_status()
        out.append(r.json()["output_ids"])
    return out


def compare(a: argparse.Namespace) -> int:
    path = a.model_path or model_dir(a.preset)
    vocab = json.load(open(Path(path) / "config.json"))["vocab_size"]
    rng = random.Random(0)
    prompts = [[rng.randrange(100, vocab) for _ in range(n)] for n in (5, 40, 200, 700)]
    flags = ["--device", a.device, "--page-size", "16", "--max-total-tokens", "16384"]
    log_dir = a.log_dir or tempfile.mkdtemp(prefix="gpu-check-compare-")
    print(f"model {path}; device {a.device}; backends {a.backends}; logs in {log_dir}",
          flush=True)
    result: dict[str, Any] = {"check": "compare", "device": a.device, "preset": a.preset}
    live: list[Any] = []
    try:
        t0 = time.time()
        unified = launch_server(path, log_dir, "unified", flags)
        live.append(unified)
        ref = greedy(unified.url, prompts, a.new_tokens)
        unified.stop()
        for backend in a.backends:
            cluster = launch_pd_cluster(path, f"{log_dir}/{backend}", backend, args=flags)
            live.append(cluster)
            got = greedy(cluster.url, prompts, a.new_tokens)
            same = sum(g == r for g, r in zip(got, ref))
            first_diff = [next((i for i, (x, y) in enumerate(zip(g, r)) if x != y), None)
                          for g, r in zip(got, ref)]
            result[backend] = {"identical": same, "of": len(prompts),
                               "first_diff_at": first_diff}
            print(f"1P1D {backend}: {same}/{len(prompts)} greedy outputs identical to unified "
                  f"({a.new_tokens} tokens each; first differing position {first_diff})",
                  flush=True)
            cluster.stop()
        result["seconds"] = round(time.time() - t0, 1)
    finally:
        for x in live:
            x.stop()
        stop_own_children()
    ok = all(result[b]["identical"] == len(prompts) for b in a.backends)
    result["ok"] = ok
    print(json.dumps(result), flush=True)
    return 0 if ok else 1


def roofline(a: argparse.Namespace) -> int:
    from bench_engine import EngineRunner

    path = a.model_path or model_dir(a.preset)
    cfg = json.load(open(Path(path) / "config.json"))
    weight_bytes = sum(f.stat().st_size for f in Path(path).glob("*.safetensors"))
    heads = cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    kv_per_token = 2 * cfg["num_hidden_layers"] * heads * head_dim * 2  # K and V, bf16
    bw = a.hbm_tb_s * 1e12
    eng = EngineRunner(path, "bfloat16", a.device)
    rng = random.Random(0)
    result: dict[str, Any] = {"check": "roofline", "device": a.device, "preset": a.preset,
                              "weight_bytes": weight_bytes, "kv_bytes_per_token": kv_per_token}
    try:
        for batch in (1, 32):
            ids = [[rng.randrange(100, cfg["vocab_size"]) for _ in range(128)]
                   for _ in range(batch)]
            eng.run(ids, 2)  # warm-up at this shape
            rates = []
            for _ in range(a.reps):
                t1, tn = eng.run(ids, 1), eng.run(ids, 32)
                rates.append(batch * 31 / max(tn - t1, 1e-9))
            tok_s = sorted(rates)[len(rates) // 2]
            ctx = 128 + 16
            roof = batch * bw / (weight_bytes + batch * ctx * kv_per_token)
            result[f"decode@{batch}"] = {"tok_s": round(tok_s, 1), "roofline_tok_s":
                                         round(roof, 1), "fraction": round(tok_s / roof, 4)}
            print(f"decode@{batch}: {tok_s:.1f} tok/s; HBM roofline ({a.hbm_tb_s} TB/s, "
                  f"{weight_bytes / 1e9:.3f} GB weights + KV) {roof:.0f} tok/s: "
                  f"{tok_s / roof * 100:.1f} % of it", flush=True)
    finally:
        eng.close()
    print(json.dumps(result), flush=True)
    return 0


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("compare", "roofline"):
        p = sub.add_parser(name)
        p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
        p.add_argument("--preset", default="qwen3-0.6b")
        p.add_argument("--model-path", default=None)
    c = sub.choices["compare"]
    c.add_argument("--backends", nargs="+", default=["nixl", "mooncake_tcp"])
    c.add_argument("--new-tokens", type=int, default=32)
    c.add_argument("--log-dir", default=None)
    r = sub.choices["roofline"]
    r.add_argument("--hbm-tb-s", type=float, default=4.8, help="H200: about 4.8 TB/s")
    r.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    sys.exit(compare(a) if a.cmd == "compare" else roofline(a))


if __name__ == "__main__":
    main()
