"""NIXL backend: the common manager with a NIXL agent (UCX by default) as its data plane.

KV regions are registered as VRAM on CUDA and DRAM on CPU; metadata rows always as DRAM. A
region's device id is the GPU it lives on for VRAM and 0 for DRAM, and the same id goes into
every write descriptor for it (NIXL finds no registration otherwise: NIXL_ERR_NOT_FOUND).
The decode ships its agent metadata in its KV-args registration; the prefill adds it as a
remote agent and WRITEs into it. Completion travels as the common ZMQ status message (no NIXL
notifications), exactly as with Mooncake.

Exposure: NIXL's UCX backend listens (TCP) on one address per interface it uses; for a --host
naming an address it uses only the interface holding it (``ucx_devices.py``: on ``lo`` that is
127.0.0.1 whatever 127.x address --host names), for a wildcard every interface; UCX_NET_DEVICES
overrides. Agent metadata travels only over our control plane, bound to the server's --host.
"""

from __future__ import annotations

import os
import uuid
from typing import Any, Optional

from sglang.srt.disaggregation.common.bootstrap_server import BootstrapServer
from sglang.srt.disaggregation.common.conn import CommonKVReceiver, CommonKVSender
from sglang.srt.disaggregation.common.manager import CommonKVManager
from sglang.srt.disaggregation.common.room_table import PeerInfo
from sglang.srt.disaggregation.common.utils import Blocks
from sglang.srt.disaggregation.nixl.agent import NixlAgent
from sglang.srt.env import envs


def _mem_kind(device: str) -> str:
    return "VRAM" if str(device).startswith("cuda") else "DRAM"


def _dev_id(mem: str, gpu_id: int) -> int:
    return gpu_id if mem == "VRAM" else 0


class NixlKVManager(CommonKVManager):
    backend_name = "nixl"

    def _init_engine(self) -> None:
        a = self.args
        self.kv_mem = _mem_kind(a.device)
        name = f"sglang-{self.mode}-{a.local_host}-{uuid.uuid4().hex[:12]}"
        self.kv_dev = _dev_id(self.kv_mem, a.gpu_id)
        # UCX listens on the interface holding --host (bootstrap_host), not on every one
        self.agent = NixlAgent(name, envs.nixl_backend,
                               a.extra.get("bootstrap_host", a.local_host))
        self.agent.register(a.kv_data_ptrs, a.kv_data_lens, self.kv_mem, self.kv_dev)
        self.agent.register(a.aux_data_ptrs, a.aux_data_lens, "DRAM", 0)
        st_ptrs, st_lens = self.staging_regions()
        if st_ptrs:
            self.agent.register(st_ptrs, st_lens, self.kv_mem, self.kv_dev)  # the pool's device
        if self.mode == "decode":
            self.agent.start_progress(envs.nixl_progress_interval)

    def describe(self) -> dict[str, Any]:
        return {
            "backend": "nixl",
            "protocol": self.agent.backend,
            "device": self.kv_mem,
            "agent_name": self.agent.name,
            # the interfaces UCX may use ("all": every one, UCX's default)
            "ucx_net_devices": self.agent.net_devices or os.environ.get("UCX_NET_DEVICES", "all"),
        }

    def backend_compat_problem(self, prefill_info: dict[str, Any]) -> Optional[str]:
        theirs = prefill_info.get("transfer", {}).get("protocol")
        if theirs != self.agent.backend:
            return (
                f"NIXL backend differs: prefill {theirs}, decode {self.agent.backend}; set the "
                f"same SGLANG_DISAGGREGATION_NIXL_BACKEND on both"
            )
        return None

    def transfer_info(self) -> dict[str, Any]:
        return {
            "agent_name": self.agent.name,
            "agent_metadata": self.agent.metadata(),
            "kv_mem": self.kv_mem,
            "kv_dev": self.kv_dev,  # the device id the decode registered its KV under
        }

    def add_peer(self, peer: PeerInfo) -> None:
        metadata = peer.transfer.get("agent_metadata")
        if not metadata or not isinstance(metadata, bytes):
            raise ValueError(f"decode {peer.endpoint} registered without NIXL agent metadata")
        mem, dev = peer.transfer.get("kv_mem"), peer.transfer.get("kv_dev")
        if mem not in ("DRAM", "VRAM") or not isinstance(dev, int) or isinstance(dev, bool) \
                or not 0 <= dev < 1024:
            raise ValueError(f"decode {peer.endpoint} registered a bad KV memory {mem!r}:{dev!r}")
        peer.handle = self.agent.add_remote(metadata)

    def remove_peer(self, peer: PeerInfo) -> None:
        if peer.handle:
            self.agent.remove_remote(peer.handle)

    def merges_aux(self, peer: PeerInfo) -> bool:
        """One NIXL transfer has one memory kind per side: KV and metadata rows (DRAM) share
        it only where the KV lives in DRAM on both sides."""
        return self.kv_mem == "DRAM" and peer.transfer.get("kv_mem") == "DRAM"

    def write(self, peer: PeerInfo, blocks: Blocks, kind: str) -> None:
        if kind == "kv":
            local_mem, local_dev = self.kv_mem, self.kv_dev
            remote_mem, remote_dev = peer.transfer["kv_mem"], peer.transfer["kv_dev"]
        else:
            local_mem, local_dev, remote_mem, remote_dev = "DRAM", 0, "DRAM", 0
        self.agent.write(
            peer.handle, blocks, local_mem, remote_mem, local_dev, remote_dev,
            envs.transfer_timeout,
        )

    def _shutdown_engine(self) -> None:
        self.agent.close()


class NixlKVSender(CommonKVSender):
    pass


class NixlKVReceiver(CommonKVReceiver):
    pass


class NixlKVBootstrapServer(BootstrapServer):
    pass
