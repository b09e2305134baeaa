"""Mooncake TransferEngine, wrapped: protocol choice, memory registration, bounded batch writes.

P2P handshake mode: no metadata server; a peer is addressed by its session id "host:rpc_port".

Exposure: the session id advertises the server's address (its --host, or this machine's routable
IP for a wildcard: ``utils.network.advertised_host``), but Mooncake (0.3.x) binds its
handshake/RPC port on 0.0.0.0 and its TCP data port on every interface whatever that host is
(MC_TCP_BIND_ADDRESS does not change them here); restrict them with a firewall, or use RDMA
(MC_RDMA_BIND_ADDRESS) where the NIC allows.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Optional, Sequence

from sglang.srt.disaggregation.common.transfer_worker import TransferFailed
from sglang.srt.disaggregation.common.utils import Blocks, batched, merge_adjacent
from sglang.srt.utils.network import bracket_host

logger = logging.getLogger(__name__)

IB_SYSFS = "/sys/class/infiniband"
_logged_choice = False
_log_lock = threading.Lock()


def pick_protocol(ib_device: Optional[str], force_tcp: bool = False) -> tuple[str, str, str]:
    """(protocol, device list, why): TCP when forced (the mooncake_tcp backend), else RDMA when
    a NIC is named or present, else TCP."""
    if force_tcp:
        return "tcp", "", "--disaggregation-transfer-backend mooncake_tcp"
    if ib_device:
        return "rdma", ib_device, f"--disaggregation-ib-device {ib_device}"
    try:
        devices = sorted(os.listdir(IB_SYSFS))
    except OSError:
        devices = []
    if devices:
        return "rdma", "", f"RDMA devices found under {IB_SYSFS}: {', '.join(devices)}"
    return (
        "tcp",
        "",
        f"no RDMA device found under {IB_SYSFS}; pass --disaggregation-ib-device to use RDMA",
    )


def _import_engine() -> type:
    try:
        from mooncake.engine import TransferEngine
    except ImportError as e:
        raise ImportError(
            f"Mooncake transfer engine unavailable ({e}). Install mooncake-transfer-engine "
            f"(CUDA hosts) or mooncake-transfer-engine-non-cuda (CPU hosts; needs libibverbs1), "
            f"or use --disaggregation-transfer-backend nixl."
        ) from e
    return TransferEngine


class MooncakeTransferEngine:
    def __init__(self, host: str, ib_device: Optional[str], force_tcp: bool = False):
        global _logged_choice
        self.protocol, self.device, why = pick_protocol(ib_device, force_tcp)
        with _log_lock:
            if not _logged_choice:
                _logged_choice = True
                logger.info(
                    "Mooncake: %s transport%s (%s)", self.protocol.upper(),
                    f" on {self.device}" if self.device else "", why,
                )
        self.engine = _import_engine()()
        rc = self.engine.initialize(host, "P2PHANDSHAKE", self.protocol, self.device)
        if rc != 0:
            raise RuntimeError(
                f"Mooncake TransferEngine.initialize({host!r}, 'P2PHANDSHAKE', "
                f"{self.protocol!r}, {self.device!r}) failed with code {rc}"
            )
        self.session_id = f"{bracket_host(host)}:{self.engine.get_rpc_port()}"
        self._registered: list[tuple[int, int]] = []

    def register(self, ptrs: Sequence[int], lens: Sequence[int]) -> None:
        """Register each (ptr, len) once, adjacent regions merged into one (a block may then
        span them); registering the same region twice fails."""
        new = [r for r in merge_adjacent(ptrs, lens) if r not in self._registered]
        if not new:
            return
        rc = self.engine.batch_register_memory([p for p, _ in new], [n for _, n in new])
        if rc != 0:
            raise RuntimeError(f"Mooncake batch_register_memory of {len(new)} regions: code {rc}")
        self._registered.extend(new)

    def write(self, session_id: str, blocks: Blocks, batch_size: int) -> None:
        """Synchronous writes in batches of at most ``batch_size`` blocks."""
        for piece in batched(blocks, batch_size):
            rc = self.engine.batch_transfer_sync_write(session_id, piece.src, piece.dst, piece.lens)
            if rc < 0:
                raise TransferFailed(
                    f"Mooncake batch_transfer_sync_write to session {session_id} returned {rc} "
                    f"({len(piece.src)} blocks, {piece.total_bytes()} bytes)"
                )

    def close(self) -> None:
        if self._registered:
            try:
                self.engine.batch_unregister_memory([p for p, _ in self._registered])
            except Exception:  # best effort at shutdown
                logger.debug("Mooncake unregister failed", exc_info=True)
            self._registered.clear()
