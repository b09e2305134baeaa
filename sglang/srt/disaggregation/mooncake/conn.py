"""Mooncake backend: the common manager with Mooncake's TransferEngine as its data plane."""

from __future__ import annotations

from typing import Any, Optional

from sglang.srt.disaggregation.common.bootstrap_server import BootstrapServer
from sglang.srt.disaggregation.common.conn import CommonKVReceiver, CommonKVSender
from sglang.srt.disaggregation.common.manager import CommonKVManager
from sglang.srt.disaggregation.common.room_table import PeerInfo
from sglang.srt.disaggregation.common.utils import Blocks
from sglang.srt.disaggregation.mooncake.transfer_engine import MooncakeTransferEngine
from sglang.srt.env import envs


class MooncakeKVManager(CommonKVManager):
    backend_name = "mooncake"
    force_tcp = False

    def _init_engine(self) -> None:
        a = self.args
        self.engine = MooncakeTransferEngine(a.local_host, a.ib_device, self.force_tcp)
        st_ptrs, st_lens = self.staging_regions()
        self.engine.register(
            list(a.kv_data_ptrs) + list(a.aux_data_ptrs) + st_ptrs,
            list(a.kv_data_lens) + list(a.aux_data_lens) + st_lens,
        )

    def describe(self) -> dict[str, Any]:
        return {
            "backend": "mooncake",
            "protocol": self.engine.protocol,
            "device": self.engine.device,
            "session_id": self.engine.session_id,
        }

    def backend_compat_problem(self, prefill_info: dict[str, Any]) -> Optional[str]:
        theirs = prefill_info.get("transfer", {}).get("protocol")
        if theirs != self.engine.protocol:
            return (
                f"Mooncake transport differs: prefill {theirs}, decode {self.engine.protocol}; "
                f"give both the same --disaggregation-ib-device (or run both without RDMA)"
            )
        return None

    def transfer_info(self) -> dict[str, Any]:
        return {"session_id": self.engine.session_id}

    def add_peer(self, peer: PeerInfo) -> None:
        session = peer.transfer.get("session_id")
        if not session:
            raise ValueError(f"decode {peer.endpoint} registered without a Mooncake session id")
        peer.handle = session

    def remove_peer(self, peer: PeerInfo) -> None:
        pass  # Mooncake keeps no per-peer state that needs dropping

    def merges_aux(self, peer: PeerInfo) -> bool:
        return True  # one batch may mix any registered memory

    def write(self, peer: PeerInfo, blocks: Blocks, kind: str) -> None:
        self.engine.write(peer.handle, blocks, envs.max_transfer_batch)

    def _shutdown_engine(self) -> None:
        self.engine.close()



class MooncakeTcpKVManager(MooncakeKVManager):
    """--disaggregation-transfer-backend mooncake_tcp: Mooncake on its TCP transport even where
    an RDMA NIC is present (peers see the backend "mooncake", protocol "tcp")."""

    force_tcp = True

class MooncakeKVSender(CommonKVSender):
    pass


class MooncakeKVReceiver(CommonKVReceiver):
    pass


class MooncakeKVBootstrapServer(BootstrapServer):
    pass
