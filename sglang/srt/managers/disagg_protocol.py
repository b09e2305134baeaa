"""The contract between the scheduler and a PD layer (prefill or decode queues).

The scheduler owns its lists (waiting, running), its outputs and its KV cache; a PD layer never
reaches into them. The scheduler asks, the layer answers:

    layer.add(req)                    a request arrived (the layer owns it until it answers)
    layer.poll(load) -> Admissions    once per step: what moved since the last poll
    layer.after_prefill(batch) -> [req]  after an extend pass: requests now held by a transfer
    layer.abort(rid) -> [req]         requests the layer ended now ("" = all)
    layer.release(req)                the scheduler finished ``req``: forget its room and slot

``Admissions`` says what the scheduler does next: ``admitted`` requests join the waiting queue
(prefill: their decode's pages arrived), ``decoded`` requests start decoding with the first token
the prefill sent (decode: their KV landed), ``ended`` requests are finished by the scheduler
(a transfer done, or a failure with its reason set on the request).

A layer sees the KV cache only through ``KVPort`` (grow a request's pages, count and free
pages) and the scheduler's size only through ``Load``. Unified mode runs the same loop with
``NoDisagg``, which hands every request straight back as admitted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional, Protocol

if TYPE_CHECKING:
    from sglang.srt.managers.req import Req
    from sglang.srt.managers.schedule_policy import ScheduledBatch


@dataclass(frozen=True)
class Load:
    """How full the scheduler is, as a PD layer may see it."""

    running: int
    waiting: int
    max_running: int


@dataclass
class Decoded:
    """A decode request whose KV and metadata row arrived: what the prefill computed."""

    req: "Req"
    first_token: int
    cached_tokens: int = 0
    logprob: Optional[float] = None
    top_logprobs: list[tuple[float, int]] = field(default_factory=list)


@dataclass
class Admissions:
    admitted: list["Req"] = field(default_factory=list)
    decoded: list[Decoded] = field(default_factory=list)
    ended: list["Req"] = field(default_factory=list)


class KVPort(Protocol):
    """The part of the KV cache a PD layer may use (the scheduler's KVCacheManager)."""

    page_size: int

    @property
    def available_pages(self) -> int: ...

    def pages_for(self, num_tokens: int) -> int: ...

    def grow(self, req: "Req", new_len: int) -> bool: ...

    def free_pages(self, pages: list[int]) -> None: ...


class StatsSink(Protocol):
    """The scheduler's metrics recorder, as a PD layer reports to it."""

    def on_bootstrapped(self, req: "Req") -> None: ...

    def on_transfer(self, metric: dict[str, Any]) -> None: ...

    def on_failure(self, what: str) -> None: ...


@dataclass
class PDContext:
    """What a PD layer is built from: the server's flags, the KV pool a transfer engine
    registers, the narrow cache port, the metrics sink, the scheduler's batch limit."""

    args: Any  # ServerArgs
    pool: Any  # KVPool
    kv: KVPort
    stats: StatsSink
    max_running: int
    device: str
    # tensor parallelism: this rank and the model's heads (the pool holds this rank's share)
    tp_size: int = 1
    tp_rank: int = 0
    num_heads: int = 0
    num_kv_heads: int = 0
    dp_rank: int = 0  # this scheduler's replica (--dp-size); the prefill registers under it


class DisaggLayer(Protocol):
    mode: str

    def add(self, req: "Req") -> None: ...

    def poll(self, load: Load) -> Admissions: ...

    def after_prefill(self, batch: "ScheduledBatch") -> list["Req"]: ...

    def abort(self, rid: str) -> list["Req"]: ...

    def release(self, req: "Req") -> None: ...

    def busy(self) -> bool: ...

    def queue_sizes(self) -> dict[str, int]: ...

    def info(self) -> dict[str, Any]: ...

    def describe(self) -> dict[str, Any]: ...

    def shutdown(self) -> None: ...


class NoDisagg:
    """Unified mode: no bootstrap, no transfer; a request is admitted at the next poll."""

    mode = "null"

    def __init__(self) -> None:
        self._new: list[Req] = []

    def add(self, req: "Req") -> None:
        self._new.append(req)

    def poll(self, load: Load) -> Admissions:
        new, self._new = self._new, []
        return Admissions(admitted=new)

    def after_prefill(self, batch: "ScheduledBatch") -> list["Req"]:
        return []

    def abort(self, rid: str) -> list["Req"]:
        gone = [r for r in self._new if rid in ("", r.rid)]
        self._new = [r for r in self._new if r not in gone]
        return gone

    def release(self, req: "Req") -> None:
        pass

    def busy(self) -> bool:
        return bool(self._new)

    def queue_sizes(self) -> dict[str, int]:
        return {"num_new_reqs": len(self._new)}  # arrived since the last step

    def info(self) -> dict[str, Any]:
        return {}

    def describe(self) -> dict[str, Any]:
        return {}

    def shutdown(self) -> None:
        pass
