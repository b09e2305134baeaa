"""Which files of ``sglang`` one PD request runs through on the scheduler side.

A prefill and a decode Scheduler in one process, the real Mooncake backend over loopback, one
greedy request from arrival to the decode's final output; every function call in any thread is
recorded (sys.setprofile) and the files listed with the first function seen in each. Used to
compare the request path before and after a change (issue 9):

    python -m sglang.tools.create_model --preset tiny --output /tmp/tiny
    python -m sglang.tools.pd_request_path /tmp/tiny
"""
import os
import sys
import threading
import time

import sglang
from sglang.srt.disaggregation.layer import make_pd_layer
from sglang.srt.managers.io_struct import TokenizedGenerateReqInput
from sglang.srt.managers.scheduler import Scheduler
from sglang.srt.sampling.sampling_params import SamplingParams
from sglang.srt.server_args import ServerArgs
from sglang.srt.utils.network import free_port



def _scheduler(model: str, mode: str, bootstrap_port: int) -> Scheduler:
    args = ServerArgs(model_path=model, device="cpu", page_size=4, max_total_tokens=512,
                      disaggregation_mode=mode, disaggregation_bootstrap_port=bootstrap_port,
                      disaggregation_transfer_backend="mooncake", skip_server_warmup=True)
    return Scheduler(args, make_disagg=make_pd_layer)


def trace(model: str) -> dict[str, tuple[str, str]]:
    """file -> (thread, first function) for every sglang file one PD request runs through."""
    bport = free_port()
    prefill, decode = _scheduler(model, "prefill", bport), _scheduler(model, "decode", bport)
    seen: dict[str, tuple[str, str]] = {}
    me = __file__

    def prof(frame, event, arg):  # noqa: ARG001
        f = frame.f_code.co_filename
        if (event == "call" and "/sglang/" in f and "site-packages" not in f and f != me
                and f not in seen):
            seen[f] = (threading.current_thread().name, frame.f_code.co_name)

    sp = SamplingParams(max_new_tokens=4, temperature=0.0)
    threading.setprofile(prof)
    sys.setprofile(prof)
    try:
        for sched in (prefill, decode):
            sched.handle(TokenizedGenerateReqInput(
                "r0", list(range(1, 30)), sp, bootstrap_host="127.0.0.1",
                bootstrap_port=bport, bootstrap_room=77))
        deadline = time.time() + 60
        while not any(o.finished_reason for o in decode.outbox):
            if time.time() > deadline:
                raise RuntimeError("the request did not finish within 60 s")
            prefill.step()
            decode.step()
            time.sleep(0.001)
    finally:
        sys.setprofile(None)
        threading.setprofile(None)
    root = os.path.dirname(os.path.dirname(os.path.abspath(sglang.__file__)))
    return {os.path.relpath(f, root): v for f, v in sorted(seen.items())}


if __name__ == "__main__":
    files = trace(sys.argv[1])
    for name, (thread, func) in sorted(files.items()):
        print(f"  {name}  ({thread}: {func})")
    print(f"{len(files)} files")
    os._exit(0)  # the transfer engines' threads would keep the process alive
