"""What a server answers once one of its scheduler processes (a TP rank, a DP replica) died."""

from __future__ import annotations

import os
import signal
import time

import requests


def kill_and_await_503(url: str, pid: int, timeout: float = 30) -> requests.Response:
    """SIGKILL ``pid``, then send /generate until the server answers 503 (or ``timeout``
    passes); returns the last answer."""
    os.kill(pid, signal.SIGKILL)
    deadline = time.time() + timeout
    while True:
        r = requests.post(url + "/generate", timeout=30, json={
            "text": "hi", "sampling_params": {"max_new_tokens": 4}})
        if r.status_code == 503 or time.time() > deadline:
            return r
        time.sleep(0.5)


def rank_gone(pid: int, timeout: float = 15) -> bool:
    """Has process ``pid`` (a scheduler rank) exited and been reaped within ``timeout``?"""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False
