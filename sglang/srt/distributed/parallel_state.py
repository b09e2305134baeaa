"""The tensor-parallel process group of this scheduler process, and its collectives.

One group per server, one process per rank: gloo on CPU, NCCL on CUDA (plus a gloo group for
Python objects, as SGLang keeps one). Before ``init_tp_group`` (and with ``--tp-size 1``) the
rank is 0 of 1 and every collective returns its input untouched, so a tp=1 server runs no
collective at all. ``head_split`` is SGLang's split of attention heads: query heads divide
evenly; KV heads divide when there are at least as many as ranks, else each rank holds one and
``tp_size / num_kv_heads`` ranks share (replicate) it.

Over several nodes (``host`` given) gloo talks over the node's own address: torch's gloo picks
the address of the machine's hostname (or the interfaces named by GLOO_SOCKET_IFNAME, which
takes an interface name, not an address), and ``init_process_group`` ignores gloo's
``pg_options`` (torch 2.13), so the group is built by a registered backend, ``gloo_host``, that
is torch's ProcessGroupGloo with one TCP device bound to ``host``. GLOO_SOCKET_IFNAME, when set,
wins (torch's own gloo then).
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


@dataclass
class _TPGroup:
    rank: int
    size: int
    device_group: Any  # the collectives on tensors (gloo or nccl)
    cpu_group: Any  # objects (gloo)


_TP: Optional[_TPGroup] = None


GLOO_HOST = "gloo_host"
_gloo_host: Optional[str] = None  # the address gloo_host's devices bind (one per process)


def _make_gloo_host(store: Any, rank: int, size: int, timeout: datetime.timedelta) -> Any:
    opts = dist.ProcessGroupGloo._Options()
    opts._devices = [dist.ProcessGroupGloo.create_device(hostname=_gloo_host)]
    opts._timeout = timeout
    return dist.ProcessGroupGloo(store, rank, size, opts)


def gloo_backend(host: Optional[str]) -> str:
    """The gloo backend to use for ranks talking over ``host`` (None: torch's default)."""
    global _gloo_host
    if not host or os.environ.get("GLOO_SOCKET_IFNAME"):
        return "gloo"
    _gloo_host = host
    if not hasattr(dist.Backend, GLOO_HOST.upper()):
        dist.Backend.register_backend(GLOO_HOST, _make_gloo_host, devices=["cpu"])
    return GLOO_HOST


def init_tp_group(rank: int, size: int, init_method: str, device: str = "cpu",
                  timeout_s: float = 600.0, host: Optional[str] = None) -> None:
    """Join the server's group (``init_method`` e.g. ``tcp://127.0.0.1:PORT``). tp=1: no-op.
    ``host``: the address this node's gloo ranks listen on (several nodes)."""
    global _TP
    if size == 1:
        _TP = None
        return
    gloo = gloo_backend(host)
    backend = "nccl" if device == "cuda" else gloo
    dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=size,
                            timeout=datetime.timedelta(seconds=timeout_s))
    world = dist.group.WORLD
    cpu_group = world if backend == gloo else dist.new_group(backend=gloo)
    _TP = _TPGroup(rank, size, world, cpu_group)
    where = ""
    if gloo == GLOO_HOST:
        where = f", gloo on {host}"
    elif host:
        where = f", gloo on GLOO_SOCKET_IFNAME={os.environ['GLOO_SOCKET_IFNAME']}"
    logger.info("TP rank %d of %d joined (%s, %s%s), pid %d", rank, size, backend, init_method,
                where, os.getpid())


def destroy_tp_group() -> None:
    global _TP
    if _TP is not None:
        _TP = None
        if dist.is_initialized():
            dist.destroy_process_group()


def get_tp_rank() -> int:
    return _TP.rank if _TP is not None else 0


def get_tp_size() -> int:
    return _TP.size if _TP is not None else 1


def tp_all_reduce(x: torch.Tensor) -> torch.Tensor:
    """Sum of ``x`` over the ranks, in place (the row-parallel layers' partial sums)."""
    if _TP is None:
        return x
    dist.all_reduce(x, group=_TP.device_group)
    return x


def tp_all_gather(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """The ranks' ``x`` (equal shapes) concatenated along ``dim``, in rank order."""
    if _TP is None:
        return x
    x = x.contiguous()
    parts = [torch.empty_like(x) for _ in range(_TP.size)]
    dist.all_gather(parts, x, group=_TP.device_group)
    return torch.cat(parts, dim=dim)


def tp_min_int(value: int) -> int:
    """The smallest ``value`` over the ranks (e.g. KV pool pages: every rank must agree)."""
    if _TP is None:
        return value
    t = torch.tensor([value], dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MIN, group=_TP.cpu_group)
    return int(t.item())


def tp_min_ints(values: list[int]) -> list[int]:
    """The smallest of each ``values[i]`` over the ranks, in one all-reduce (PD queues agree on
    their requests' transfer states with it)."""
    if _TP is None:
        return list(values)
    t = torch.tensor(values, dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MIN, group=_TP.cpu_group)
    return [int(v) for v in t.tolist()]


def gather_objects(obj: Any) -> list:
    """Every rank's picklable ``obj``, in rank order, on every rank (tp=1: ``[obj]``)."""
    if _TP is None:
        return [obj]
    out: list = [None] * _TP.size
    dist.all_gather_object(out, obj, group=_TP.cpu_group)
    return out


def broadcast_objects(objs: Optional[list], src: int = 0) -> list:
    """Rank ``src``'s list of picklable objects, on every rank (others pass None)."""
    if _TP is None:
        return objs or []
    box = [objs if _TP.rank == src else None]
    dist.broadcast_object_list(box, src=src, group=_TP.cpu_group)
    return box[0] or []


@dataclass(frozen=True)
class HeadSplit:
    """This rank's attention heads: ``num_heads`` query heads from ``q_start``, and
    ``num_kv_heads`` KV heads from ``kv_start`` (in the checkpoint's head order)."""

    num_heads: int
    num_kv_heads: int
    q_start: int
    kv_start: int


def head_split(num_heads: int, num_kv_heads: int, tp_size: int, tp_rank: int) -> HeadSplit:
    if num_heads % tp_size:
        raise ValueError(
            f"--tp-size {tp_size} does not divide the model's {num_heads} attention heads"
        )
    if num_kv_heads >= tp_size:
        if num_kv_heads % tp_size:
            raise ValueError(
                f"--tp-size {tp_size} does not divide the model's {num_kv_heads} KV heads"
            )
        kv = num_kv_heads // tp_size
        kv_start = tp_rank * kv
    else:
        if tp_size % num_kv_heads:
            raise ValueError(f"--tp-size {tp_size} is not a multiple of the model's "
                             f"{num_kv_heads} KV heads (they are replicated when fewer)")
        kv, kv_start = 1, tp_rank // (tp_size // num_kv_heads)
    h = num_heads // tp_size
    return HeadSplit(h, kv, tp_rank * h, kv_start)
