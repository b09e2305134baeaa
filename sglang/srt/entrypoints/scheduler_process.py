"""The scheduler process's entry: join the TP group (``--tp-size`` > 1), build the Scheduler
(with the PD layer of its mode), report ready or the start-up error to the launcher, run the
loop, shut the transfer engine down. TP ranks other than 0 get no ZMQ addresses: only rank 0
talks to the tokenizer manager. With ``--dp-size`` N there are N such groups (replicas), each
with its own rendezvous and ``dp_rank``. Any error (a peer rank gone breaks the next
collective) ends the process, so a server whose rank died exits instead of hanging."""

from __future__ import annotations

import logging
import os
from typing import Any, Optional

import zmq

import torch

from sglang.srt.disaggregation.layer import make_pd_layer
from sglang.srt.distributed import init_tp_group
from sglang.srt.env import envs
from sglang.srt.managers.io_struct import SchedulerReady
from sglang.srt.managers.scheduler import Scheduler
from sglang.srt.server_args import ServerArgs
from sglang.srt.utils.device import resolve_device
from sglang.srt.utils.network import advertised_host

logger = logging.getLogger(__name__)


def run_scheduler_process(
    args: ServerArgs, recv_addr: Optional[str], send_addr: Optional[str], ready_pipe: Any,
    tp_rank: int = 0, dist_init_method: Optional[str] = None, dp_rank: int = 0,
) -> None:
    mode = args.disaggregation_mode
    tp = (f" DP{dp_rank}" if args.dp_size > 1 else "") + (
        f" TP{tp_rank}" if args.tp_size > 1 else "")
    logging.basicConfig(
        level=args.log_level.upper(),
        format=f"[%(asctime)s {mode}-sched{tp}] %(levelname)s %(name)s: %(message)s",
    )
    if args.dp_size > 1:
        logger.info("DP rank %d of %d, TP rank %d: pid %d", dp_rank, args.dp_size, tp_rank,
                    os.getpid())
    recv = send = None
    if recv_addr is not None:
        ctx = zmq.Context()
        recv = ctx.socket(zmq.PULL)
        recv.bind(recv_addr)
        send = ctx.socket(zmq.PUSH)
        send.connect(send_addr)
    try:
        if args.tp_size > 1:
            device = resolve_device(args.device)
            if device == "cuda":  # NCCL binds each rank to its GPU
                torch.cuda.set_device(args.base_gpu_id + tp_rank)
            # several nodes: the ranks' gloo traffic goes over this node's address
            node_host = advertised_host(args.host) if args.nnodes > 1 else None
            init_tp_group(tp_rank, args.tp_size, dist_init_method, device,
                          timeout_s=max(args.watchdog_timeout, 60.0), host=node_host)
        ranks = args.tp_size * args.dp_size
        if ranks > 1 and resolve_device(args.device) == "cpu" and not envs.num_threads:
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // ranks))  # they share the cores
        sched = Scheduler(args, make_disagg=make_pd_layer, tp_rank=tp_rank, dp_rank=dp_rank)
        sched.warmup()
    except Exception as e:  # report start-up failures to the launcher, then exit
        logger.exception("scheduler failed to start")
        ready_pipe.send({"error": f"{type(e).__name__}: {e}"})
        return
    ready_pipe.send(SchedulerReady(sched.ready_info()))
    try:
        sched.run(recv, send)
    except RuntimeError as e:
        if args.tp_size == 1:
            raise
        logger.error("TP rank %d exits: a collective with the other ranks failed (a rank died "
                     "or hung?): %s", tp_rank, str(e)[:300])
        raise SystemExit(1) from None
    finally:
        sched.disagg.shutdown()
