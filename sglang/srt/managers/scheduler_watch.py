"""The HTTP process's view of the scheduler processes: alive, answering, how loaded.

A mixin of TokenizerManager: once a scheduler process is gone (any TP rank of any DP replica),
every waiting request ends with an abort (status 503, naming the rank) instead of hanging, new
ones fail at once, and the other scheduler processes are stopped; /health asks whether every
replica answers within SGLANG_HEALTH_CHECK_TIMEOUT; /get_server_info, /get_load and
/flush_cache ask every replica (one entry per DP rank, as SGLang's).
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
    server_args: Any
    scheduler_info: dict[str, Any]
    dp: Any  # DataParallelController

    def watch_scheduler(self, procs: dict[str, Any]) -> asyncio.Task:
        """Poll the scheduler processes (every rank by its name, ``SchedulerHandle.named``);
        once one is gone, fail what waits on it and stop the others (call from the event loop).
        Returns the watch, which ends once that is done."""
        if self._watch_task is None:
            self._watch_task = asyncio.get_running_loop().create_task(self._watch(procs))
        return self._watch_task

    async def _watch(self, procs: dict[str, Any]) -> None:
        while all(p.is_alive() for p in procs.values()):
            await asyncio.sleep(0.5)
        dead = [(name, p) for name, p in procs.items() if not p.is_alive()]
        # a rank killed by a signal (negative code) before the ranks that exited because of it
        name, proc = min(dead, key=lambda d: (d[1].exitcode or 0) >= 0)
        which = f" of {name}" if name else ""
        self.scheduler_dead = (
            f"the scheduler process{which} exited (code {proc.exitcode}); the server cannot "
            "serve requests any more and must be restarted"
        )
        logger.error(self.scheduler_dead)
        for state in list(self._states.values()):
            self._fail(state, self.scheduler_dead)
        for fut in list(self._rpc.values()):
            if not fut.done():
                fut.set_exception(RuntimeError(self.scheduler_dead))
        await _stop_others(procs)

    def _fail(self, state: Any, message: str) -> None:
        m = state.meta
        reason = abort_reason(message, 503)
        state.out.append(ReqOutput(state.obj.rid, [], reason, m.get("prompt_tokens", 0),
                                   m.get("completion_tokens", 0), m.get("cached_tokens", 0)))
        state.event.set()

    async def scheduler_responds(self, timeout: float) -> bool:
        """Does the scheduler answer (an RPC, or any output) within ``timeout`` seconds? With
        ``--dp-size`` N, every replica must answer the RPC."""
        if self.scheduler_dead:
            return False
        tic = time.time()
        task = asyncio.ensure_future(self.rpc_all("get_info", timeout=timeout))
        try:
            while not task.done() and time.time() - tic < timeout:
                if self.last_receive > tic and self.dp.dp_size == 1:
                    return True
                await asyncio.wait([task], timeout=0.05)
            return task.done() and not task.cancelled() and task.exception() is None
        finally:
            if not task.done():
                task.cancel()

    async def rpc_all(self, method: str, timeout: float = 30, **args: Any) -> list[Any]:
        """``method`` on every DP replica's scheduler; the answers in DP rank order."""
        return list(await asyncio.gather(*[
            self.rpc(method, timeout, dp_rank=d, **args) for d in range(self.dp.dp_size)]))

    async def internal_states(self, timeout: float = 30) -> list[dict[str, Any]]:
        """Every replica's scheduler state (``Scheduler.info``, which holds its dp_rank)."""
        return await self.rpc_all("get_info", timeout=timeout)

    async def get_load(self) -> list[dict[str, Any]]:
        """SGLang's /get_load: one entry per DP rank."""
        loads = []
        for st in await self.internal_states(envs.health_check_timeout):
            pd = st.get("disaggregation", {})
            queued = sum(v for k, v in pd.items() if k.endswith("_queue") and isinstance(v, int))
            waiting = st["num_waiting_reqs"] + queued
            pool = st["kv_pool"]
            loads.append({
                "dp_rank": st["dp_rank"],
                "num_reqs": st["num_running_reqs"] + waiting,
                "num_waiting_reqs": waiting,
                "num_tokens": pool["used_by_requests_pages"] * pool["page_size"],
            })
        return loads

    async def get_server_info(self) -> dict[str, Any]:
        info = {
            **vars(self.server_args),
            **self.scheduler_info,
            "internal_states": await self.internal_states(),
            "num_inflight_http_reqs": len(self._states),
            "version": "0.1.0",
        }
        if info.get("api_key"):
            info["api_key"] = "<set>"  # never echo the key
        return info

    async def flush_cache(self) -> bool:
        """Flush every replica's prefix cache; False if any was busy (it keeps its cache)."""
        return all(await self.rpc_all("flush_cache"))


async def _stop_others(procs: dict[str, Any]) -> None:
    """SIGTERM (then SIGKILL after 10 s) the scheduler processes still alive, and reap them.
    They would exit at their next collective with the dead rank anyway; a hung one (NCCL)
    might not."""
    alive = {name: p for name, p in procs.items() if p.is_alive()}
    if not alive:
        return
    logger.error("stopping the other scheduler processes (%s)", ", ".join(alive))
    for p in alive.values():
        p.terminate()
    for _ in range(20):  # is_alive() reaps an exited child: no zombie stays
        if not any(p.is_alive() for p in alive.values()):
            return
        await asyncio.sleep(0.5)
    for p in alive.values():
        if p.is_alive():
            p.kill()
    await asyncio.sleep(0.5)
    any(p.is_alive() for p in alive.values())  # reap them
