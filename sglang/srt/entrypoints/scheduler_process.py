"""The scheduler process's entry: build the Scheduler (with the PD layer of its mode), report
ready or the start-up error to the launcher, run the loop, shut the transfer engine down."""

from __future__ import annotations

import logging
from typing import Any

import zmq

from sglang.srt.disaggregation.layer import make_pd_layer
from sglang.srt.managers.io_struct import SchedulerReady
from sglang.srt.managers.scheduler import Scheduler
from sglang.srt.server_args import ServerArgs

logger = logging.getLogger(__name__)


def run_scheduler_process(
    args: ServerArgs, recv_addr: str, send_addr: str, ready_pipe: Any
) -> None:
    mode = args.disaggregation_mode
    logging.basicConfig(
        level=args.log_level.upper(),
        format=f"[%(asctime)s {mode}-sched] %(levelname)s %(name)s: %(message)s",
    )
    ctx = zmq.Context()
    recv = ctx.socket(zmq.PULL)
    recv.bind(recv_addr)
    send = ctx.socket(zmq.PUSH)
    send.connect(send_addr)
    try:
        sched = Scheduler(args, make_disagg=make_pd_layer)
        sched.warmup()
    except Exception as e:  # report start-up failures to the launcher, then exit
        logger.exception("scheduler failed to start")
        ready_pipe.send({"error": f"{type(e).__name__}: {e}"})
        return
    ready_pipe.send(SchedulerReady(sched.ready_info()))
    try:
        sched.run(recv, send)
    finally:
        sched.disagg.shutdown()
