"""Which class implements what, per transfer backend; and the fake-host ("2.2.2.2") rule.

    mgr_cls = get_kv_class("mooncake", KVClassType.MANAGER)   # or "nixl" / "fake"
    mgr = mgr_cls(kv_args, "prefill")                          # starts the bootstrap server too
    sender = create_kv_sender(mgr, "mooncake", host, port, room)  # fake for host 2.2.2.2
    (bootstrap_host "2.2.2.2", SGLang's FAKE_BOOTSTRAP_HOST, selects the fake classes whatever
    the backend; no warm-up of this engine sends it: PD servers skip the warm-up.)
"""

from __future__ import annotations

from enum import Enum
from typing import Any, Optional, Union

from sglang.srt.disaggregation.base.conn import BaseKVManager, BaseKVReceiver, BaseKVSender
from sglang.srt.utils.network import host_port

FAKE_BOOTSTRAP_HOST = "2.2.2.2"


class TransferBackend(str, Enum):
    MOONCAKE = "mooncake"
    MOONCAKE_TCP = "mooncake_tcp"  # Mooncake forced onto TCP even where RDMA is present
    NIXL = "nixl"
    FAKE = "fake"


class KVClassType(str, Enum):
    KVARGS = "kvargs"
    MANAGER = "manager"
    SENDER = "sender"
    RECEIVER = "receiver"
    BOOTSTRAP_SERVER = "bootstrap_server"


def get_kv_class(
    backend: Union[str, TransferBackend], kind: Union[str, KVClassType]
) -> Optional[type]:
    """The class of ``kind`` for ``backend``; None for the fake backend's bootstrap server
    (fake works on decode only). Backends are imported lazily: only the one in use needs its
    transfer engine installed."""
    backend = TransferBackend(backend)
    kind = KVClassType(kind)
    if kind == KVClassType.KVARGS:
        from sglang.srt.disaggregation.base.conn import KVArgs

        return KVArgs
    if backend in (TransferBackend.MOONCAKE, TransferBackend.MOONCAKE_TCP):
        from sglang.srt.disaggregation.mooncake import conn as m

        tcp = backend == TransferBackend.MOONCAKE_TCP
        classes = {
            KVClassType.MANAGER: m.MooncakeTcpKVManager if tcp else m.MooncakeKVManager,
            KVClassType.SENDER: m.MooncakeKVSender,
            KVClassType.RECEIVER: m.MooncakeKVReceiver,
            KVClassType.BOOTSTRAP_SERVER: m.MooncakeKVBootstrapServer,
        }
    elif backend == TransferBackend.NIXL:
        from sglang.srt.disaggregation.nixl import conn as n

        classes = {
            KVClassType.MANAGER: n.NixlKVManager,
            KVClassType.SENDER: n.NixlKVSender,
            KVClassType.RECEIVER: n.NixlKVReceiver,
            KVClassType.BOOTSTRAP_SERVER: n.NixlKVBootstrapServer,
        }
    else:
        from sglang.srt.disaggregation.fake import conn as f

        classes = {
            KVClassType.MANAGER: f.FakeKVManager,
            KVClassType.SENDER: f.FakeKVSender,
            KVClassType.RECEIVER: f.FakeKVReceiver,
        }
    return classes.get(kind)


def is_fake_bootstrap(host: Optional[str]) -> bool:
    return host == FAKE_BOOTSTRAP_HOST


def _create_conn(
    kind: KVClassType,
    mgr: BaseKVManager,
    backend: Union[str, TransferBackend],
    bootstrap_host: Optional[str],
    bootstrap_port: Optional[int],
    bootstrap_room: int,
) -> Any:
    fake = is_fake_bootstrap(bootstrap_host) or TransferBackend(backend) == TransferBackend.FAKE
    cls = get_kv_class(TransferBackend.FAKE if fake else backend, kind)
    assert cls is not None
    return cls(mgr, host_port(bootstrap_host, bootstrap_port), bootstrap_room)


def create_kv_sender(
    mgr: BaseKVManager,
    backend: Union[str, TransferBackend],
    bootstrap_host: Optional[str],
    bootstrap_port: Optional[int],
    bootstrap_room: int,
) -> BaseKVSender:
    """The prefill's sender for one request: fake for FAKE_BOOTSTRAP_HOST, else the backend's."""
    return _create_conn(KVClassType.SENDER, mgr, backend, bootstrap_host, bootstrap_port,
                        bootstrap_room)


def create_kv_receiver(
    mgr: BaseKVManager,
    backend: Union[str, TransferBackend],
    bootstrap_host: Optional[str],
    bootstrap_port: Optional[int],
    bootstrap_room: int,
) -> BaseKVReceiver:
    """The decode's receiver for one request: fake for FAKE_BOOTSTRAP_HOST, else the backend's."""
    return _create_conn(KVClassType.RECEIVER, mgr, backend, bootstrap_host, bootstrap_port,
                        bootstrap_room)
