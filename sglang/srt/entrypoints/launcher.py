"""Start the scheduler process and build the TokenizerManager that talks to it."""

from __future__ import annotations

import atexit
import logging
import multiprocessing as mp
import os
import signal
import tempfile

from sglang.srt.managers.io_struct import SchedulerReady
from sglang.srt.entrypoints.scheduler_process import run_scheduler_process
from sglang.srt.managers.tokenizer_manager import TokenizerManager
from sglang.srt.server_args import ServerArgs

logger = logging.getLogger(__name__)


class SchedulerHandle:
    def __init__(self, proc: mp.Process):
        self.proc = proc

    def shutdown(self) -> None:
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(10)
            if self.proc.is_alive():
                self.proc.kill()
                self.proc.join(5)


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
    # OpenMP threads that spin while waiting collapse (20x slower measured here) as soon as
    # another busy process shares the cores, as prefill and decode servers on one host do. The
    # price is a thread wake-up per parallel op (decode up to ~1.5x slower on an idle 2-core VM):
    # a user who owns the cores can set OMP_WAIT_POLICY=ACTIVE or a GOMP_SPINCOUNT instead.
    if "GOMP_SPINCOUNT" not in os.environ:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    ctx = mp.get_context("spawn")
    reader, writer = ctx.Pipe(duplex=False)
    proc = ctx.Process(
        target=run_scheduler_process, args=(args, to_sched, to_tm, writer), daemon=True
    )
    proc.start()
    handle = SchedulerHandle(proc)
    atexit.register(handle.shutdown)
    while not reader.poll(1.0):
        if not proc.is_alive():
            raise RuntimeError(f"scheduler process exited during start-up (code {proc.exitcode})")
    ready = reader.recv()
    if not isinstance(ready, SchedulerReady):
        handle.shutdown()
        raise RuntimeError(f"scheduler failed to start: {ready.get('error')}")
    tm = TokenizerManager(args, ready.info, recv_addr=to_tm, send_addr=to_sched)
    return tm, handle


def install_signal_handlers(handle: SchedulerHandle) -> None:
    def _stop(signum, frame):  # noqa: ARG001
        handle.shutdown()
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, _stop)
