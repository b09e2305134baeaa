"""NIXL agent, wrapped: memory registration, remote agents, and blocking WRITE transfers."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Optional, Sequence

import numpy as np

from sglang.srt.disaggregation.common.transfer_worker import TransferFailed
from sglang.srt.disaggregation.common.utils import Blocks, merge_adjacent
from sglang.srt.disaggregation.nixl import ucx_devices

logger = logging.getLogger(__name__)


def _import_nixl() -> Any:
    try:
        import nixl._api as api
    except ImportError as e:
        raise ImportError(
            f"NIXL unavailable ({e}). Install torch first, then `pip install nixl`, "
            f"or use --disaggregation-transfer-backend mooncake."
        ) from e
    return api


SPIN_POLLS = 64  # completion checks (each drives UCX progress) before yielding the GIL


def _descs(addrs: Sequence[int], lens: Sequence[int], dev: int) -> np.ndarray:
    """(address, bytes, device id) rows as the N x 3 array NIXL reads without a Python loop."""
    out = np.empty((len(addrs), 3), dtype=np.uint64)
    out[:, 0] = addrs
    out[:, 1] = lens
    out[:, 2] = dev
    return out


class NixlAgent:
    def __init__(self, name: str, backend: str, host: Optional[str] = None):
        """``host``: the server's --host; UCX then uses only the interface holding it
        (``ucx_devices``: UCX would otherwise listen on every interface)."""
        api = _import_nixl()
        config = api.nixl_agent_config(
            backends=[backend],
            sync_mode=api.nixl_thread_sync_t.NIXL_THREAD_SYNC_STRICT,
            enable_prog_thread=False,  # see start_progress
        )
        with ucx_devices.restricted_to(host if backend == "UCX" else None) as devices:
            self.agent = api.nixl_agent(name, config)
        self.net_devices = devices  # None: UCX's own choice (every interface)
        if backend not in self.agent.backends:
            raise RuntimeError(
                f"NIXL backend {backend!r} is not available (plugins: {self.agent.plugin_list}); "
                f"set SGLANG_DISAGGREGATION_NIXL_BACKEND to one of them"
            )
        self.name = name
        self.backend = backend
        self._regs: list[Any] = []
        self._registered: set[tuple[int, int]] = set()
        self._stop = threading.Event()
        self._pump: threading.Thread | None = None

    def start_progress(self, interval: float) -> None:
        """Drive the backend's progress from a thread every ``interval`` seconds. A target of
        WRITEs needs it on transports that emulate RDMA (UCX over TCP or shared memory);
        NIXL's own progress thread would do it too, but spins a core at idle."""
        def loop() -> None:
            while not self._stop.wait(interval):
                self.agent.get_new_notifs()

        self._pump = threading.Thread(target=loop, name="nixl-progress", daemon=True)
        self._pump.start()

    def metadata(self) -> bytes:
        return bytes(self.agent.get_agent_metadata())

    def register(self, ptrs: Sequence[int], lens: Sequence[int], mem: str, device_id: int) -> None:
        """Register regions of memory kind ``mem`` ("DRAM" or "VRAM") on ``device_id``, each
        once, adjacent regions merged into one (a descriptor may then span them); writes must
        name the same device id."""
        descs = []
        for p, n in merge_adjacent(ptrs, lens):
            if (p, n) not in self._registered:
                self._registered.add((p, n))
                descs.append((p, n, device_id, ""))
        if descs:
            reg = self.agent.register_memory(descs, mem)
            if reg is None:
                raise RuntimeError(f"NIXL register_memory of {len(descs)} {mem} regions failed")
            self._regs.append(reg)

    def add_remote(self, metadata: bytes) -> str:
        name = self.agent.add_remote_agent(metadata)
        return name.decode() if isinstance(name, bytes) else str(name)

    def remove_remote(self, name: str) -> None:
        try:
            self.agent.remove_remote_agent(name)
        except Exception:
            logger.debug("NIXL remove_remote_agent(%s) failed", name, exc_info=True)

    def write(
        self,
        peer: str,
        blocks: Blocks,
        local_mem: str,
        remote_mem: str,
        local_dev: int,
        remote_dev: int,
        timeout: float,
    ) -> None:
        """One WRITE of all ``blocks`` into agent ``peer``; returns once it is DONE."""
        handle = None
        try:
            local = self.agent.get_xfer_descs(_descs(blocks.src, blocks.lens, local_dev),
                                              local_mem)
            remote = self.agent.get_xfer_descs(_descs(blocks.dst, blocks.lens, remote_dev),
                                               remote_mem)
            handle = self.agent.initialize_xfer("WRITE", local, remote, peer, b"")
            state = self.agent.transfer(handle)  # UCX over shared memory (one host): DONE here
            polls = 0
            deadline = time.monotonic() + timeout
            while state not in ("DONE", "ERR"):
                # Check back to back first: a small write completes within microseconds, and
                # a yield that hands the GIL to a busy scheduler thread costs up to its switch
                # interval (5 ms). Then yield between checks (this thread drives UCX progress
                # through check_xfer_state: no progress thread runs on the prefill).
                polls += 1
                if polls > SPIN_POLLS:
                    if time.monotonic() > deadline:
                        raise TransferFailed(
                            f"NIXL write to {peer} not done after {timeout:.0f}s")
                    time.sleep(0)
                state = self.agent.check_xfer_state(handle)
            if state == "ERR":
                raise TransferFailed(f"NIXL write to {peer} ended in ERR")
        except TransferFailed:
            raise
        except Exception as e:  # nixlRemoteDisconnectError, nixlBackendError, ...
            raise TransferFailed(f"NIXL write to {peer} failed: {type(e).__name__}: {e}") from e
        finally:
            if handle is not None:
                try:
                    self.agent.release_xfer_handle(handle)
                except Exception:
                    logger.debug("NIXL release_xfer_handle failed", exc_info=True)

    def close(self) -> None:
        self._stop.set()
        if self._pump is not None:
            self._pump.join(timeout=2)
        for reg in self._regs:
            try:
                self.agent.deregister_memory(reg)
            except Exception:
                logger.debug("NIXL deregister_memory failed", exc_info=True)
        self._regs.clear()
        self._registered.clear()
