"""The main job: a local PD cluster (1 prefill + 1 decode + mini_lb) on the built-in tiny model.

    python -m sglang.tools.pd_demo            # start, ask, print answers and KV figures, stop
    python -m sglang.tools.pd_demo --serve    # start and keep serving until Ctrl-C
"""

from __future__ import annotations

import argparse
import signal
import tempfile
import time
from pathlib import Path

import requests

from sglang.tools.server_utils import launch_pd_cluster

ROOT = Path(__file__).resolve().parents[2]


def ensure_model(preset: str) -> str:
    from sglang.tools.create_model import cached_model

    if not (ROOT / "models" / f"{preset}-seed0").exists():
        print(f"building the {preset} model into {ROOT / 'models'} ...", flush=True)
    return cached_model(preset, ROOT / "models")


def ask(base_url: str) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=base_url + "/v1", api_key="none")
    model = client.models.list().data[0].id
    question = "What is the capital of France?"
    chat = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": question}],
        max_tokens=48, temperature=0,
    )
    print(f"\n[chat] user: {question}\n[chat] assistant: {chat.choices[0].message.content!r}")
    print(f"[chat] usage: {chat.usage.prompt_tokens} prompt + "
          f"{chat.usage.completion_tokens} completion tokens")
    prompt = "A young girl named Lily"
    print(f"\n[stream] prompt: {prompt!r}\n[stream] ", end="", flush=True)
    t0, first, pieces = time.time(), None, 0
    for chunk in client.completions.create(
        model=model, prompt=prompt, max_tokens=64, temperature=0, stream=True
    ):
        if chunk.choices and chunk.choices[0].text:
            first = first or time.time()
            pieces += 1
            print(chunk.choices[0].text, end="", flush=True)
    print(f"\n[stream] {pieces} chunks, first after {((first or t0) - t0) * 1000:.0f} ms, "
          f"total {(time.time() - t0) * 1000:.0f} ms")


def print_transfer_figures(cluster) -> None:
    for p in cluster.prefills:
        info = requests.get(p.url + "/get_server_info", timeout=10).json()
        pd = info["internal_states"][0].get("disaggregation", {})
        t = pd.get("transfer", {})
        print(f"\n[kv] {p.name}: backend={pd.get('backend')} protocol={pd.get('protocol')} "
              f"transfers={t.get('transfers')} failed={t.get('failed')} "
              f"bytes={t.get('bytes')} blocks={t.get('blocks')} "
              f"time={t.get('seconds', 0) * 1000:.1f} ms -> {t.get('gb_per_s', 0):.3f} GB/s")
        last = t.get("last") or {}
        if last:
            print(f"[kv] last request: {last}")
    for d in cluster.decodes:
        info = requests.get(d.url + "/get_server_info", timeout=10).json()
        pool = info["internal_states"][0]["kv_pool"]
        print(f"[kv] {d.name} pool: {pool['free_pages']}/{pool['total_pages']} pages free")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--backend", default="mooncake", choices=["mooncake", "nixl"])
    ap.add_argument("--serve", action="store_true", help="keep the cluster up until Ctrl-C")
    args = ap.parse_args()
    model = ensure_model(args.preset)
    log_dir = tempfile.mkdtemp(prefix="sglang-demo-")
    print(f"starting 1 prefill + 1 decode ({args.backend}) + mini_lb; logs in {log_dir}",
          flush=True)
    cluster = launch_pd_cluster(model, log_dir, backend=args.backend,
                                args=["--max-total-tokens", "65536"])
    try:
        for p in cluster.procs():
            print(f"  {p.name:9s} {p.url}")
        ask(cluster.url)
        print_transfer_figures(cluster)
        if args.serve:
            print(f"\nserving on {cluster.url} (OpenAI base {cluster.url}/v1); Ctrl-C stops")
            signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt))
            while all(p.alive() for p in cluster.procs()):
                time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()
        print("\ncluster stopped", flush=True)



if __name__ == "__main__":
    main()
