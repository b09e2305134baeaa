"""--watchdog-timeout: a scheduler step that runs too long dumps every stack and ends the process.

The scheduler marks the start and end of each loop iteration; a daemon thread checks the
mark. An iteration running longer than the timeout (a hung forward pass, a deadlock) gets
every thread's stack written to stderr (faulthandler, so it works while the main thread is
stuck in C code) and the process exits with WATCHDOG_EXIT_CODE. The HTTP process sees the
scheduler gone and answers 503 (see managers/scheduler_watch.py).

Test only: SGLANG_TEST_BLOCK_SCHEDULER_RID=<rid> makes the step that would run that request
hang, so tests can show /health going 503 and the watchdog firing.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import sys
import threading
import time
from typing import Any, Optional

from sglang.srt.env import envs

logger = logging.getLogger(__name__)

WATCHDOG_EXIT_CODE = 3


class Watchdog:
    def __init__(self, timeout: float):
        self.timeout = timeout
        self._step_start: Optional[float] = None
        self._thread = threading.Thread(target=self._run, name="watchdog", daemon=True)
        self._thread.start()

    def step_begin(self) -> None:
        self._step_start = time.monotonic()

    def step_end(self) -> None:
        self._step_start = None

    def _run(self) -> None:
        period = min(1.0, max(0.05, self.timeout / 4))
        while True:
            time.sleep(period)
            start = self._step_start
            if start is not None and time.monotonic() - start > self.timeout:
                self._fire(time.monotonic() - start)

    def _fire(self, elapsed: float) -> None:
        logger.error(
            "Scheduler watchdog timeout: one scheduler step has run %.1f s, longer than "
            "--watchdog-timeout %.1f s. Stacks of every thread follow; the scheduler exits.",
            elapsed, self.timeout,
        )
        for h in logging.getLogger().handlers:
            h.flush()
        sys.stderr.flush()
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        sys.stderr.flush()
        os._exit(WATCHDOG_EXIT_CODE)


def apply_test_hooks(reqs: list[Any]) -> None:
    """Test hooks, off by default: hang here forever if the batch holds
    SGLANG_TEST_BLOCK_SCHEDULER_RID; sleep SGLANG_TEST_STEP_DELAY seconds before each step."""
    delay = envs.test_step_delay
    if delay:
        time.sleep(delay)
    rid = envs.test_block_scheduler_rid
    if rid and any(r.rid == rid for r in reqs):
        logger.warning("test hook: blocking the scheduler on rid=%s", rid)
        while True:
            time.sleep(1)
