"""The decode's connections to prefills: the handshake with each prefill replica, and the
registrations it yields.

A connection is keyed by (bootstrap addr, dp_rank). Making one: fetch the replica's registration
(GET /route, retried while it is starting), refuse it if its KV layout differs, then send this
decode's memory registration (RegisterMsg) to every prefill rank whose heads this rank needs
(tp_layout.source_plan); a source rank whose heads go through DRAM staging is recorded in
``staged`` (tp_staging.py). A prefill with ``--dp-size`` N holds room R in replica R % N: replica
0's registration says N. A connection is dropped when its prefill says it forgot this decode
(``forget_endpoint``) or the heartbeat declares the prefill lost (``pop``); the next request for
it then handshakes afresh.

The registry shares the room table's (re-entrant) lock, so that DecodeSide reads a lost prefill's
connections and its rooms in one step.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from typing import TYPE_CHECKING, Any, Callable, Optional

from sglang.srt.disaggregation.common.handshake import (
    HandshakeRefused,
    PrefillUnavailable,
    fetch_with_retry,
    handshake_problem,
)
from sglang.srt.disaggregation.common.tp_layout import source_plan
from sglang.srt.utils.network import bracket_host

if TYPE_CHECKING:
    from sglang.srt.disaggregation.common.manager import CommonKVManager

logger = logging.getLogger(__name__)


class PrefillConnections:
    def __init__(self, mgr: CommonKVManager, lock: threading.RLock,
                 wanted: Callable[[str], bool]):
        """``wanted(addr)``: whether any request still waits on that prefill (a handshake
        stops retrying once none does)."""
        self.mgr = mgr
        self.lock = lock
        # (bootstrap addr, dp_rank) -> registration (replica 0's says the prefill's dp_size)
        self.by_key: dict[tuple[str, int], dict[str, Any]] = {}
        self._key_locks: dict[tuple[str, int], threading.Lock] = defaultdict(threading.Lock)
        self._closing = threading.Event()
        self._wanted = wanted

    def cached(self, addr: str, room: int) -> Optional[dict[str, Any]]:
        """The registration of the replica holding ``room`` if already connected, else None."""
        with self.lock:
            first = self.by_key.get((addr, 0))
            return (self.by_key.get((addr, room % first.get("dp_size", 1)))
                    if first is not None else None)

    def connect(self, addr: str, room: int) -> dict[str, Any]:
        """The registration of the replica holding ``room``, handshaking with it (and with
        replica 0, which says the dp_size) first if needed. Raises HandshakeRefused or
        PrefillUnavailable (or anything the transfer engine raises)."""
        info = self.ensure_connected(addr)  # replica 0's registration says the dp_size
        dp_rank = room % info.get("dp_size", 1)
        if dp_rank:
            info = self.ensure_connected(addr, dp_rank)
        return info

    def ensure_connected(self, addr: str, dp_rank: int = 0) -> dict[str, Any]:
        """The registration of the prefill's replica ``dp_rank``, after the KV-args
        registration was sent to it."""
        key = (addr, dp_rank)
        with self._key_locks[key]:
            info = self.by_key.get(key)
            if info is not None:
                return info
            info = self._fetch(addr, 0, dp_rank)
            mine = self.mgr.local_info()
            self._check(addr, info, mine)
            sources: dict[str, int] = {}
            staged: dict[str, tuple[int, int]] = {}
            for sl, expected in source_plan(info, mine):
                rinfo = (info if sl.prefill_rank == 0
                         else self._fetch(addr, sl.prefill_rank, dp_rank))
                if sl.prefill_rank != 0:
                    self._check(addr, rinfo, mine)
                endpoint = f"{bracket_host(rinfo['rank_ip'])}:{rinfo['rank_port']}"
                self.mgr.control.forget(endpoint)  # a restarted prefill: fresh socket
                reg = self.mgr.registration(None if sl.num_heads == -1 else sl)
                if not self.mgr.control.send(endpoint, reg):
                    raise PrefillUnavailable(f"could not reach prefill manager {endpoint}")
                sources[endpoint] = expected
                if (self.mgr.scatter is not None and self.mgr.pool_view is not None
                        and 0 < sl.num_heads == rinfo.get("num_local_kv_heads")
                        and sl.num_heads < mine["num_local_kv_heads"]):
                    staged[endpoint] = (sl.dst_head, sl.num_heads)  # tp_staging.py: scatter
            info["endpoint"] = f"{bracket_host(info['rank_ip'])}:{info['rank_port']}"
            info["sources"], info["staged"] = sources, staged
            with self.lock:
                self.by_key[key] = info
            logger.info(
                "Connected to prefill %s%s (managers %s, %s)", addr,
                f" DP rank {dp_rank}" if dp_rank else "", sources, info.get("transfer"),
            )
            return info

    def _check(self, addr: str, info: dict[str, Any], mine: dict[str, Any]) -> None:
        """HandshakeRefused if the prefill rank's KV cannot fill this decode rank's."""
        problem = handshake_problem(info, mine) or self.mgr.backend_compat_problem(info)
        if problem is not None:
            logger.error("Refusing prefill %s: %s", addr, problem)
            raise HandshakeRefused(f"Prefill {addr} refused at handshake: {problem}")
        if info.get("device") != self.mgr.args.device:
            logger.warning(
                "Prefill %s keeps its KV on %s, this decode on %s: the transfer engine "
                "must be built for both", addr, info.get("device"), self.mgr.args.device,
            )

    def _fetch(self, addr: str, rank: int = 0, dp_rank: int = 0) -> dict[str, Any]:
        return fetch_with_retry(addr, rank, self._closing, lambda: self._wanted(addr), dp_rank)

    def known(self) -> dict[str, str]:
        """Connected prefills: bootstrap addr -> instance id of its bootstrap server."""
        with self.lock:
            return {a: i.get("bootstrap_instance", "") for (a, _), i in self.by_key.items()}

    def knows_source(self, endpoint: str) -> bool:
        """Whether ``endpoint`` is the manager of a connected prefill rank."""
        with self.lock:
            return any(endpoint in i["sources"] for i in self.by_key.values())

    def forget_endpoint(self, endpoint: str) -> None:
        """The prefill rank at ``endpoint`` forgot this decode: drop its connections."""
        with self.lock:
            for key, info in list(self.by_key.items()):
                if endpoint in info["sources"]:
                    del self.by_key[key]
                    logger.info("Prefill %s forgot this decode; will re-register", key[0])

    def pop(self, addr: str) -> list[dict[str, Any]]:
        """Drop (and return) every connection to the prefill at ``addr``."""
        with self.lock:
            return [self.by_key.pop(k) for k in list(self.by_key) if k[0] == addr]

    def close(self) -> None:
        self._closing.set()
