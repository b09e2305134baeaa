"""Start the scheduler processes (one per TP rank of this node) and build the TokenizerManager
that talks to rank 0. The ranks join one ``torch.distributed`` group at ``--dist-init-addr`` (a
free loopback port when one node).

Start-up order (it is most of a server's launch time): the scheduler processes are spawned first,
and this module does not import torch, so a caller that spawns before its own heavy imports
(``launch_server``) overlaps them with the children's; the tokenizer loads while they start."""

from __future__ import annotations

import atexit
import logging
import multiprocessing as mp
import os
import signal
import tempfile
from typing import Any, Callable, Optional

from sglang.srt.managers.io_struct import SchedulerReady
from sglang.srt.managers.tokenizer_manager import TokenizerManager
from sglang.srt.server_args import ServerArgs
from sglang.srt.utils.network import LOOPBACK, free_port, host_port

logger = logging.getLogger(__name__)


class SchedulerHandle:
    """The scheduler processes; ``proc`` is TP rank 0's (the one the HTTP process watches: it
    exits when another rank dies)."""

    def __init__(self, procs: list[mp.Process]):
        self.procs = procs
        self.proc = procs[0]

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
    to_sched = f"ipc://{ipc_dir}/to_scheduler"
    to_tm = f"ipc://{ipc_dir}/to_tokenizer"
    handle, wait_ready = spawn_schedulers(args, to_sched, to_tm)
    try:  # the tokenizer (transformers' import, then the files) loads while the ranks start
        tokenizer = load_tokenizer(args)
    except BaseException:
        handle.shutdown()
        raise
    infos = wait_ready()
    tm = TokenizerManager(args, infos[0], recv_addr=to_tm, send_addr=to_sched,
                          tokenizer=tokenizer)
    return tm, handle


def load_tokenizer(args: ServerArgs) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(args.tokenizer_path)


def _scheduler_main(*args: Any) -> None:
    """The spawned process's target, here so that pickling it does not import torch into the
    launching process (the scheduler module imports torch at its top)."""
    from sglang.srt.entrypoints.scheduler_process import run_scheduler_process

    run_scheduler_process(*args)


def start_schedulers(args: ServerArgs, to_sched: Optional[str] = None,
                     to_tm: Optional[str] = None) -> tuple[SchedulerHandle, list[dict]]:
    """This node's ranks (``tp_size / nnodes`` from ``node_rank * that``), ready; global rank 0
    gets the ZMQ addresses."""
    handle, wait_ready = spawn_schedulers(args, to_sched, to_tm)
    return handle, wait_ready()


def spawn_schedulers(args: ServerArgs, to_sched: Optional[str] = None,
                     to_tm: Optional[str] = None
                     ) -> tuple[SchedulerHandle, Callable[[], list[dict]]]:
    """Start this node's ranks; the returned function waits until all are ready (their infos,
    rank order) or raises on the first start-up error."""
    # OpenMP threads that spin while waiting collapse (20x slower measured here) as soon as
    # another busy process shares the cores, as prefill and decode servers on one host do. The
    # price is a thread wake-up per parallel op (decode up to ~1.5x slower on an idle 2-core VM):
    # a user who owns the cores can set OMP_WAIT_POLICY=ACTIVE or a GOMP_SPINCOUNT instead.
    if "GOMP_SPINCOUNT" not in os.environ:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    ctx = mp.get_context("spawn")
    dist_init = None
    if args.dist_init_addr:
        dist_init = f"tcp://{args.dist_init_addr}"
    elif args.tp_size > 1:
        dist_init = f"tcp://{host_port(LOOPBACK, free_port())}"
    per_node = args.tp_size // args.nnodes
    first = args.node_rank * per_node
    procs, readers = [], []
    for rank in range(first, first + per_node):
        reader, writer = ctx.Pipe(duplex=False)
        addrs = (to_sched, to_tm) if rank == 0 else (None, None)
        procs.append(ctx.Process(target=_scheduler_main, daemon=True,
                                 args=(args, *addrs, writer, rank, dist_init)))
        readers.append(reader)
    for proc in procs:
        proc.start()
    handle = SchedulerHandle(procs)
    atexit.register(handle.shutdown)
    return handle, lambda: _wait_ready(procs, readers, handle, first)


def _wait_ready(procs: list, readers: list, handle: SchedulerHandle, first: int
                ) -> list[dict]:
    """Every rank's ready info; the first start-up error (or exit) of any rank stops all."""
    infos: dict[int, dict] = {}
    multi = len(procs) > 1 or first > 0
    name = (lambda r: f"scheduler (TP rank {first + r})") if multi else (lambda r: "scheduler")
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
