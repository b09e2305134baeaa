"""How many KV pages a server gets: --max-total-tokens, else a share of free device memory (on
a CPU, the ``--dp-size`` replicas split one share of host memory: they all live in it)."""

from __future__ import annotations

from typing import Optional

import psutil
import torch

CPU_KV_FRACTION = 0.1  # default share of free host memory for the KV pool on CPU
CPU_MAX_POOL_TOKENS = 1 << 18


def kv_pool_pages(
    bytes_per_token: int,
    page_size: int,
    device: str,
    max_total_tokens: Optional[int] = None,
    mem_fraction_static: Optional[float] = None,
    replicas: int = 1,
) -> int:
    if max_total_tokens:
        tokens = max_total_tokens
    elif device == "cuda":
        free, total = torch.cuda.mem_get_info()
        frac = mem_fraction_static or 0.85
        tokens = int((free - total * (1 - frac)) // bytes_per_token)
    else:
        frac = mem_fraction_static or CPU_KV_FRACTION
        avail = psutil.virtual_memory().available
        tokens = min(int(avail * frac / replicas // bytes_per_token), CPU_MAX_POOL_TOKENS)
    pages = tokens // page_size
    if pages < 1:
        raise RuntimeError(
            f"no room for a KV pool ({bytes_per_token} bytes per token); "
            "lower the model size or raise --mem-fraction-static / --max-total-tokens"
        )
    return pages
