"""The manager shared by the Mooncake and NIXL backends.

One per scheduler process. It owns the ZMQ control plane and, by mode:
  prefill: a PrefillSide (rooms, transfer workers, its DecodePeers) and, unless told otherwise, the
           bootstrap server; it registers itself there (PUT /route) at start-up.
  decode:  a DecodeSide (rooms, heartbeat, its PrefillConnections).
A backend subclass supplies the data plane: ``_init_engine``, ``transfer_info``, ``add_peer``,
``remove_peer``, ``write``, ``_shutdown_engine``, ``describe``.
"""

from __future__ import annotations

import logging
from abc import abstractmethod
from typing import Any, Optional

from sglang.srt.disaggregation.base.conn import BaseKVManager, KVArgs
from sglang.srt.disaggregation.common.bootstrap_server import BootstrapServer
from sglang.srt.disaggregation.common.control_plane import ControlPlane
from sglang.srt.disaggregation.common.decode_side import DecodeSide
from sglang.srt.disaggregation.common.handshake import register_prefill
from sglang.srt.disaggregation.common.messages import (
    AbortAckMsg,
    AbortMsg,
    Message,
    MetadataMsg,
    PingMsg,
    PongMsg,
    RegisterMsg,
    StatusMsg,
)
from sglang.srt.disaggregation.common.prefill_side import PrefillSide
from sglang.srt.disaggregation.common.room_table import PeerInfo
from sglang.srt.disaggregation.common.tp_layout import Slice
from sglang.srt.disaggregation.common.tp_staging import (
    GatherBuffers,
    ScatterStaging,
    pool_heads,
    staging_bytes,
)
from sglang.srt.disaggregation.common.transfer_worker import TransferFailed
from sglang.srt.disaggregation.common.utils import Blocks
from sglang.srt.distributed.parallel_state import head_split
from sglang.srt.env import envs
from sglang.srt.utils.network import host_port

logger = logging.getLogger(__name__)

__all__ = ["CommonKVManager", "TransferFailed"]


class CommonKVManager(BaseKVManager):
    """``KVArgs.extra`` options: ``start_bootstrap_server`` (prefill, default True),
    ``bootstrap_host`` (where that server and the control socket bind: the server's --host;
    default ``local_host``, the address this manager advertises), ``bootstrap_secret`` (what this
    rank's registration carries when another process runs the bootstrap server; default
    SGLANG_DISAGGREGATION_BOOTSTRAP_SECRET), ``dp_rank`` and ``dp_size`` (``--dp-size``: the
    replica this manager serves and how many the prefill has; default 0 and 1)."""

    backend_name = "common"

    def __init__(self, args: KVArgs, mode: str):
        if mode not in ("prefill", "decode"):
            raise ValueError(f"KV manager mode must be 'prefill' or 'decode', got {mode!r}")
        self.args = args
        self.mode = mode
        self.bootstrap_server: Optional[BootstrapServer] = None
        self.prefill: Optional[PrefillSide] = None
        self.decode: Optional[DecodeSide] = None
        self._closed = False
        self._init_staging()
        self._init_engine()
        self.control = ControlPlane(args.local_host, self._on_message,
                                    args.extra.get("bootstrap_host"))
        self.endpoint = self.control.endpoint
        if mode == "prefill":
            self.prefill = PrefillSide(self)
        else:
            self.decode = DecodeSide(self)
        self.control.start()
        if mode == "prefill":
            if args.extra.get("start_bootstrap_server", True):
                host = args.extra.get("bootstrap_host") or args.local_host
                self.bootstrap_server = BootstrapServer(
                    host, args.bootstrap_port, args.extra.get("bootstrap_secret"))
            self.register_to_bootstrap()
        logger.info("KV manager (%s, %s) ready: %s", mode, self.backend_name, self.describe())

    def _init_staging(self) -> None:
        """tp_staging.py: the prefill's gather buffers or the decode's scatter staging, on the
        pool's device, and this rank's pool as [region, page, token, head, word]."""
        a = self.args
        self.gather_bufs: Optional[GatherBuffers] = None
        self.scatter: Optional[ScatterStaging] = None
        self.pool_view = None
        total, pool = staging_bytes(), a.kv_buffer
        if (total == 0 or pool is None or not a.kv_data_ptrs or a.kv_item_len <= 0
                or pool.data_ptr() != a.kv_data_ptrs[0]):
            return
        self.pool_view = pool_heads(pool, len(a.kv_data_ptrs), a.kv_data_lens[0] // a.kv_item_len,
                                    a.page_size, self.tp_info()["num_local_kv_heads"])
        if self.pool_view is None:
            return
        if self.mode == "prefill":
            self.gather_bufs = GatherBuffers(total, envs.transfer_threads, len(a.kv_data_ptrs),
                                             pool.device)
        else:
            self.scatter = ScatterStaging(total, len(a.kv_data_ptrs), pool.device)

    def staging_regions(self) -> tuple[list[int], list[int]]:
        """Memory the engine must register besides the KV regions and metadata rows (on the
        KV pool's device)."""
        if self.gather_bufs is not None:
            return self.gather_bufs.ptrs_lens()
        if self.scatter is not None:
            return [self.scatter.buf.ptr], [self.scatter.buf.nbytes]
        return [], []

    # ---- what both sides agree on --------------------------------------------------------
    def local_info(self) -> dict[str, Any]:
        """What must match between prefill and decode (checked at the decode's handshake)."""
        a = self.args
        return {
            "backend": self.backend_name,
            "page_size": a.page_size,
            "kv_dtype": a.kv_dtype,
            "model_shape": dict(a.model_shape),
            "kv_item_len": a.kv_item_len,
            "num_kv_regions": len(a.kv_data_ptrs),
            "device": a.device,
            "transfer": self.describe(),
            **self.tp_info(),
        }

    def tp_info(self) -> dict[str, Any]:
        """This rank's place in its server's TP layout (tp_layout.py)."""
        a = self.args
        kv = int(a.model_shape.get("num_kv_heads", 1))
        split = head_split(a.num_heads or kv, kv, a.tp_size, a.engine_rank)
        return {"tp_size": a.tp_size, "tp_rank": a.engine_rank, "num_heads": a.num_heads or kv,
                "kv_head_start": split.kv_start, "num_local_kv_heads": split.num_kv_heads}

    def backend_compat_problem(self, prefill_info: dict[str, Any]) -> Optional[str]:
        """Backend-specific mismatch with the prefill's registration, or None."""
        return None

    def register_to_bootstrap(self) -> None:
        info = self.local_info()
        dp_rank = self.args.extra.get("dp_rank", 0)
        info.update(
            engine_rank=self.args.engine_rank,
            rank_ip=self.args.local_host,
            rank_port=self.control.port,
            dp_rank=dp_rank,
            dp_size=self.args.extra.get("dp_size", 1),
        )
        if self.bootstrap_server is not None:
            secret = self.bootstrap_server.secret
        else:
            secret = self.args.extra.get("bootstrap_secret") or envs.bootstrap_secret
        # dialed from this machine: the bootstrap server's own bind address (loopback for a
        # wildcard), or the advertised one where another process runs it; another replica's
        # bootstrap server may still be loading its model: wait longer
        where = self.args.extra.get("bootstrap_host") or self.args.local_host
        register_prefill(host_port(where, self.args.bootstrap_port), info, secret,
                         attempts=5 if self.bootstrap_server is not None else 60)

    def registration(self, sl: Optional[Slice] = None) -> RegisterMsg:
        """Decode side: what the prefill needs to write into this decode's memory; ``sl``:
        which of the prefill rank's heads go where (None: whole pages, same layout)."""
        a = self.args
        msg = RegisterMsg(
            peer=self.endpoint,
            engine_rank=a.engine_rank,
            kv_ptrs=list(a.kv_data_ptrs),
            kv_item_len=a.kv_item_len,
            aux_ptrs=list(a.aux_data_ptrs),
            aux_item_lens=list(a.aux_item_lens),
            transfer=self.transfer_info(),
            tp_size=a.tp_size,
            stage_ptrs=self.scatter.buf.ptrs() if self.scatter is not None else [],
        )
        if sl is not None:
            msg.src_head, msg.dst_head, msg.num_heads = sl.src_head, sl.dst_head, sl.num_heads
            msg.dst_num_heads = self.tp_info()["num_local_kv_heads"]
            msg.sends_aux = sl.sends_aux
        return msg

    # ---- control plane -------------------------------------------------------------------
    def _on_message(self, msg: Message) -> None:
        if isinstance(msg, (StatusMsg, AbortAckMsg, PingMsg)):
            if self.decode is not None:
                if isinstance(msg, StatusMsg):
                    self.decode.on_status(msg)
                elif isinstance(msg, PingMsg):
                    self.decode.on_ping(msg)
                else:
                    self.decode.on_abort_ack(msg)
                return
        elif self.prefill is not None:
            if isinstance(msg, RegisterMsg):
                self.prefill.decodes.on_register(msg)
            elif isinstance(msg, MetadataMsg):
                self.prefill.on_metadata(msg)
            elif isinstance(msg, AbortMsg):
                self.prefill.on_abort(msg)
            elif isinstance(msg, PongMsg):
                self.prefill.decodes.on_pong(msg)
            return
        logger.warning("%s manager ignores a %s message from %s", self.mode, msg.T, msg.peer)

    # ---- backend hooks -------------------------------------------------------------------
    @abstractmethod
    def _init_engine(self) -> None:
        """Create the transfer engine and register KV regions and aux buffers."""

    @abstractmethod
    def transfer_info(self) -> dict[str, Any]:
        """Decode side: backend fields of the registration (session id, agent metadata)."""

    @abstractmethod
    def add_peer(self, peer: PeerInfo) -> None:
        """Prefill side: make ``peer`` writable (may set ``peer.handle``)."""

    @abstractmethod
    def remove_peer(self, peer: PeerInfo) -> None: ...

    @abstractmethod
    def write(self, peer: PeerInfo, blocks: Blocks, kind: str) -> None:
        """Write ``blocks`` (``kind`` "kv" or "aux") into ``peer``; return once they landed,
        raise TransferFailed otherwise."""

    def merges_aux(self, peer: PeerInfo) -> bool:
        """Whether a last chunk's KV blocks and metadata rows may go in one ``write(.., "kv")``
        (the engine can move both kinds of memory in one call)."""
        return False

    @abstractmethod
    def _shutdown_engine(self) -> None: ...

    # ---- life cycle ----------------------------------------------------------------------
    def shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.decode is not None:
            self.decode.close()
        if self.prefill is not None:
            self.prefill.close()
        self.control.close()
        if self.bootstrap_server is not None:
            self.bootstrap_server.close()
        if self.gather_bufs is not None:
            self.gather_bufs.close()
        self._shutdown_engine()
