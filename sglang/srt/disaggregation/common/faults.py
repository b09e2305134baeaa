"""Test-only fault injection for PD transfers, off unless its environment knobs are set:

  SGLANG_TEST_DISAGG_FAILURE_PROB        fraction of requests that fail (drawn once per request)
  SGLANG_TEST_DISAGG_WRITE_FAILURE_PROB  fraction of the prefill's engine writes that fail
  SGLANG_TEST_DISAGG_WRITE_DELAY_MS      delay before each of the prefill's engine writes

The write knobs wrap the data plane in the common transfer worker, so they act the same on
Mooncake and NIXL.
"""

from __future__ import annotations

import random
import time

from sglang.srt.env import envs

INJECTED_REQUEST = "Failed by SGLANG_TEST_DISAGG_FAILURE_PROB (test only)"


class InjectedWriteFailure(RuntimeError):
    """A write failed on purpose (SGLANG_TEST_DISAGG_WRITE_FAILURE_PROB)."""


def request_fails(rng: random.Random | None = None) -> bool:
    """Whether a new request is to fail (one draw per request)."""
    prob = envs.test_failure_prob
    return prob > 0 and (rng or random).random() < prob


def before_write(kind: str, peer: str) -> None:
    """Delay and/or fail the write that follows, as the knobs say."""
    delay = envs.test_write_delay_ms
    if delay > 0:
        time.sleep(delay / 1000)
    prob = envs.test_write_failure_prob
    if prob > 0 and random.random() < prob:
        raise InjectedWriteFailure(
            f"{kind} write to {peer} failed by SGLANG_TEST_DISAGG_WRITE_FAILURE_PROB (test only)"
        )
