"""Read a server's KV-pool state from /get_server_info and assert no page is lost (on every DP
replica of a ``--dp-size`` server, and every TP rank of a ``--tp-size`` one)."""

from __future__ import annotations

import time

import requests


def pool_states(url: str) -> list[dict]:
    """Every DP replica's scheduler state."""
    return requests.get(url + "/get_server_info", timeout=10).json()["internal_states"]


def pool_state(url: str) -> dict:
    return pool_states(url)[0]


def idle_and_whole(state: dict) -> bool:
    """Idle, every page free or cached, every metadata slot free; also on each other TP rank
    (``tp_ranks``: a ``--tp-size`` server's ranks 1.., gathered by rank 0)."""
    if not all(map(idle_and_whole, state.get("tp_ranks", []))):
        return False
    pool = state["kv_pool"]
    pd = state.get("disaggregation", {})
    queues = sum(v for k, v in pd.items() if k.endswith("_queue"))
    return (
        state["num_running_reqs"] == 0
        and state["num_waiting_reqs"] == 0
        and queues == 0
        and pool["used_by_requests_pages"] == 0
        and pool["protected_pages"] == 0
        and pool["free_pages"] + pool["cached_pages"] == pool["total_pages"]
        and pd.get("metadata_slots_free") == pd.get("metadata_slots")
    )


def assert_pool_whole(url: str, timeout: float = 20) -> dict:
    """Wait until the server is idle, then assert every KV page is free or cached, on every DP
    replica; returns the first replica's state."""
    deadline = time.time() + timeout
    states = pool_states(url)
    while not all(map(idle_and_whole, states)) and time.time() < deadline:
        time.sleep(0.2)
        states = pool_states(url)
    assert all(map(idle_and_whole, states)), f"KV pool not whole at {url}: {states}"
    return states[0]
