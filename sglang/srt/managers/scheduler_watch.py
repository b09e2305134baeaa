"""The HTTP process's view of the scheduler process: alive, answering, how loaded.

A mixin of TokenizerManager: once the scheduler process is gone, every waiting request ends
with an abort (status 503) instead of hanging, and new ones fail at once; /health asks whether
the scheduler answers within SGLANG_HEALTH_CHECK_TIMEOUT; /get_load reports its queues.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Optional

from sglang.srt.base_types import abort_reason
from sglang.srt.env import envs
from sglang.srt.managers.io_struct import ReqOutput

logger = logging.getLogger(__name__)


class SchedulerWatch:
    scheduler_dead: Optional[str]
    _watch_task: Optional[asyncio.Task]
    _states: dict[str, Any]
    _rpc: dict[int, asyncio.Future]
    last_receive: float

    def watch_scheduler(self, proc: Any) -> None:
        """Poll the scheduler process; once it is gone, fail what waits on it (call once, from
        the event loop)."""
        if self._watch_task is None:
            self._watch_task = asyncio.get_running_loop().create_task(self._watch(proc))

    async def _watch(self, proc: Any) -> None:
        while proc.is_alive():
            await asyncio.sleep(0.5)
        self.scheduler_dead = (
            f"the scheduler process exited (code {proc.exitcode}); the server cannot serve "
            "requests any more and must be restarted"
        )
        logger.error(self.scheduler_dead)
        for state in list(self._states.values()):
            self._fail(state, self.scheduler_dead)
        for fut in list(self._rpc.values()):
            if not fut.done():
                fut.set_exception(RuntimeError(self.scheduler_dead))

    def _fail(self, state: Any, message: str) -> None:
        m = state.meta
        reason = abort_reason(message, 503)
        state.out.append(ReqOutput(state.obj.rid, [], reason, m.get("prompt_tokens", 0),
                                   m.get("completion_tokens", 0), m.get("cached_tokens", 0)))
        state.event.set()

    async def scheduler_responds(self, timeout: float) -> bool:
        """Does the scheduler answer (an RPC, or any output) within ``timeout`` seconds?"""
        if self.scheduler_dead:
            return False
        tic = time.time()
        task = asyncio.ensure_future(self.rpc("get_info", timeout=timeout))
        try:
            while not task.done() and time.time() - tic < timeout:
                if self.last_receive > tic:
                    return True
                await asyncio.wait([task], timeout=0.05)
            return task.done() and not task.cancelled() and task.exception() is None
        finally:
            if not task.done():
                task.cancel()

    async def get_load(self) -> list[dict[str, Any]]:
        """SGLang's /get_load: one entry per DP rank (here one)."""
        st = await self.rpc("get_info", timeout=envs.health_check_timeout)
        pd = st.get("disaggregation", {})
        queued = sum(v for k, v in pd.items() if k.endswith("_queue") and isinstance(v, int))
        waiting = st["num_waiting_reqs"] + queued
        pool = st["kv_pool"]
        return [{
            "dp_rank": 0,
            "num_reqs": st["num_running_reqs"] + waiting,
            "num_waiting_reqs": waiting,
            "num_tokens": pool["used_by_requests_pages"] * pool["page_size"],
        }]
