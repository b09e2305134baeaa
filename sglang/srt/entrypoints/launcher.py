"""Start the scheduler processes (one per TP rank of this node, times ``--dp-size`` replicas)
and build the TokenizerManager that talks to each replica's rank 0. A replica's ranks join one
``torch.distributed`` group at ``--dist-init-addr`` (replica d at its port + d; a free loopback
port when one node). A PD prefill's replicas share replica 0's bootstrap server: the launcher
hands them one secret (SGLANG_DISAGGREGATION_BOOTSTRAP_SECRET in their environment only).

Start-up order (it is most of a server's launch time): the scheduler processes are spawned first,
and this module does not import torch, so a caller that spawns before its own heavy imports
(``launch_server``) overlaps them with the children's; the tokenizer loads while they start."""

from __future__ import annotations

import atexit
import dataclasses
import logging
import multiprocessing as mp
import os
import secrets
import signal
import tempfile
from typing import Any, Callable, Optional

from sglang.srt.env import envs
from sglang.srt.managers.io_struct import SchedulerReady
from sglang.srt.managers.tokenizer_manager import TokenizerManager
from sglang.srt.server_args import ServerArgs
from sglang.srt.utils.network import LOOPBACK, free_port, host_port

logger = logging.getLogger(__name__)


SECRET_ENV = "SGLANG_DISAGGREGATION_BOOTSTRAP_SECRET"


class SchedulerHandle:
    """The scheduler processes; ``leaders`` are each DP replica's TP rank 0, ``proc`` the first;
    ``names``: each process's ranks ("DP rank 1, TP rank 0"; "" for a lone scheduler)."""

    def __init__(self, procs: list[mp.Process], leaders: Optional[list[mp.Process]] = None,
                 names: Optional[list[str]] = None):  # fmt: skip
        self.procs = procs
        self.proc = procs[0]
        self.leaders = leaders or [procs[0]]
        self.names = names or [""] * len(procs)

    def named(self) -> dict[str, mp.Process]:
        """Every process by its ranks' name (what the HTTP process watches: any one gone, the
        server answers 503 naming it and stops the others)."""
        return dict(zip(self.names, self.procs))

    def shutdown(self) -> None:
        for proc in self.procs:
            if proc.is_alive():
                proc.terminate()
        for proc in self.procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join(5)


def resolve_model_path(args: ServerArgs) -> None:
    """A hub id is fetched with huggingface_hub when the path is not a local directory."""
    if os.path.isdir(args.model_path):
        return
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(args.model_path, revision=args.revision)
    except Exception as e:
        raise RuntimeError(
            f"--model-path {args.model_path!r} is neither a local directory nor a reachable "
            f"Hugging Face model ({type(e).__name__}: {e}). Build a local model with "
            "python -m sglang.tools.create_model --preset tiny --output DIR"
        ) from None
    if args.tokenizer_path == args.model_path:
        args.tokenizer_path = local
    args.model_path = local


def launch_engine(args: ServerArgs) -> tuple[TokenizerManager, SchedulerHandle]:
    resolve_model_path(args)
    ipc_dir = tempfile.mkdtemp(prefix="sglang-ipc-")
    to_sched = [f"ipc://{ipc_dir}/to_scheduler_{d}" for d in range(args.dp_size)]
    to_tm = f"ipc://{ipc_dir}/to_tokenizer"
    handle, wait_ready = spawn_schedulers(args, to_sched, to_tm)
    try:  # the tokenizer (transformers' import, then the files) loads while the ranks start
        tokenizer = load_tokenizer(args)
    except BaseException:
        handle.shutdown()
        raise
    infos = wait_ready()
    leaders = infos[:: len(infos) // args.dp_size]  # each replica's rank 0
    info = dict(leaders[0], max_total_num_tokens=min(i["max_total_num_tokens"] for i in leaders))
    tm = TokenizerManager(args, info, recv_addr=to_tm, send_addr=to_sched, tokenizer=tokenizer)
    return tm, handle


def load_tokenizer(args: ServerArgs) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(args.tokenizer_path)


def _scheduler_main(*args: Any) -> None:
    """The spawned process's target, here so that pickling it does not import torch into the
    launching process (the scheduler module imports torch at its top)."""
    from sglang.srt.entrypoints.scheduler_process import run_scheduler_process

    run_scheduler_process(*args)


def _replica_env(args: ServerArgs) -> dict[str, str]:
    """What the scheduler processes' environment gains: the bootstrap secret a PD prefill's
    replicas share (replica 0 serves it; the others register with it)."""
    if args.dp_size > 1 and args.disaggregation_mode == "prefill" and not envs.bootstrap_secret:
        return {SECRET_ENV: secrets.token_hex(16)}
    return {}


def _start_all(procs: list[mp.Process], env: dict[str, str]) -> None:
    """Start ``procs`` with ``env`` added to what they inherit (not kept in this process)."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        for proc in procs:
            proc.start()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def start_schedulers(args: ServerArgs, to_sched: Optional[list[str]] = None,
                     to_tm: Optional[str] = None) -> tuple[SchedulerHandle, list[dict]]:
    """This node's ranks (``tp_size / nnodes`` from ``node_rank * that``) of every DP replica,
    ready (infos in replica, then rank order); each replica's global rank 0 gets its ZMQ
    addresses."""
    handle, wait_ready = spawn_schedulers(args, to_sched, to_tm)
    return handle, wait_ready()


def spawn_schedulers(args: ServerArgs, to_sched: Optional[list[str]] = None,
                     to_tm: Optional[str] = None
                     ) -> tuple[SchedulerHandle, Callable[[], list[dict]]]:
    """Start this node's ranks of every replica; the returned function waits until all are
    ready (their infos, replica then rank order) or raises on the first start-up error."""
    # OpenMP threads that spin while waiting collapse (20x slower measured here) as soon as
    # another busy process shares the cores, as prefill and decode servers on one host do. The
    # price is a thread wake-up per parallel op (decode up to ~1.5x slower on an idle 2-core VM):
    # a user who owns the cores can set OMP_WAIT_POLICY=ACTIVE or a GOMP_SPINCOUNT instead.
    if "GOMP_SPINCOUNT" not in os.environ:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    ctx = mp.get_context("spawn")
    per_node = args.tp_size // args.nnodes
    first = args.node_rank * per_node
    procs, readers, names, leaders = [], [], [], []
    for dp_rank in range(args.dp_size):
        dist_init = _dist_init(args, dp_rank)
        # replica d's ranks use GPUs base + d * tp_size + tp_rank (as SGLang)
        rargs = dataclasses.replace(args, base_gpu_id=args.base_gpu_id + dp_rank * args.tp_size)
        for rank in range(first, first + per_node):
            reader, writer = ctx.Pipe(duplex=False)
            addrs = (to_sched[dp_rank], to_tm) if rank == 0 and to_sched else (None, None)
            procs.append(ctx.Process(target=_scheduler_main, daemon=True,
                                     args=(rargs, *addrs, writer, rank, dist_init, dp_rank)))
            readers.append(reader)
            names.append(_ranks(args, dp_rank, rank))
            if rank == first:
                leaders.append(procs[-1])
    _start_all(procs, _replica_env(args))
    handle = SchedulerHandle(procs, leaders, names)
    atexit.register(handle.shutdown)
    return handle, lambda: _wait_ready(procs, readers, handle, list(map(_rank_name, names)))


def _dist_init(args: ServerArgs, dp_rank: int) -> Optional[str]:
    """Replica ``dp_rank``'s torch.distributed rendezvous (None when it has one rank)."""
    if args.dist_init_addr:
        host, _, port = args.dist_init_addr.rpartition(":")
        return f"tcp://{host_port(host, int(port) + dp_rank)}"
    if args.tp_size > 1:
        return f"tcp://{host_port(LOOPBACK, free_port())}"
    return None


def _ranks(args: ServerArgs, dp_rank: int, rank: int) -> str:
    """"DP rank 1, TP rank 0", "TP rank 1", ...: "" with one scheduler process."""
    return ", ".join(([f"DP rank {dp_rank}"] if args.dp_size > 1 else []) + (
        [f"TP rank {rank}"] if args.tp_size > 1 else []))


def _rank_name(ranks: str) -> str:
    return f"scheduler ({ranks})" if ranks else "scheduler"


def _wait_ready(procs: list, readers: list, handle: SchedulerHandle, names: list[str]
                ) -> list[dict]:
    """Every rank's ready info; the first start-up error (or exit) of any rank stops all."""
    infos: dict[int, dict] = {}
    name = names.__getitem__
    while len(infos) < len(procs):
        for rank, reader in enumerate(readers):
            if rank in infos or not reader.poll(0.2):
                continue
            ready = reader.recv()
            if not isinstance(ready, SchedulerReady):
                handle.shutdown()
                raise RuntimeError(f"{name(rank)} failed to start: {ready.get('error')}")
            infos[rank] = ready.info
        for rank, proc in enumerate(procs):
            if rank not in infos and not proc.is_alive() and not readers[rank].poll(0):
                handle.shutdown()
                raise RuntimeError(
                    f"{name(rank)} process exited during start-up (code {proc.exitcode})"
                )
    return [infos[r] for r in range(len(procs))]


def install_signal_handlers(handle: SchedulerHandle) -> None:
    def _stop(signum, frame):  # noqa: ARG001
        handle.shutdown()
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, _stop)
