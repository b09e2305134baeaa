"""python -m sglang.launch_server --model-path M [--port P] [--disaggregation-mode MODE]
[--tp-size N [--nnodes K --node-rank R --dist-init-addr HOST:PORT]]

The scheduler processes are spawned first (their imports overlap with the HTTP side's), then the
HTTP port opens (/health answers 503 while the model loads and warms up); the engine starts in a
thread and the routes serve once it is ready. A start-up failure is logged and the
process exits with code 1.
"""

from __future__ import annotations

import logging
import os
import sys
import threading

from sglang.srt.server_args import ServerArgs, prepare_server_args
from sglang.srt.utils.network import advertised_url

logger = logging.getLogger("sglang")


def launch_server(args: ServerArgs) -> None:
    from sglang.srt.entrypoints.launcher import launch_engine
    from sglang.srt.entrypoints.server_state import ServerState

    logging.basicConfig(
        level=args.log_level.upper(),
        format=f"[%(asctime)s {args.disaggregation_mode}-http] %(levelname)s %(name)s: %(message)s",
    )
    if args.node_rank > 0:  # --nnodes: only node 0 serves the API
        from sglang.srt.entrypoints.node_server import run_node

        return run_node(args)
    state = ServerState(args)
    handles: list = []

    def start_engine() -> None:
        try:
            tm, handle = launch_engine(args)
        except BaseException as e:  # noqa: BLE001 - any start-up failure ends the process
            logger.error("server failed to start: %s", e)
            logging.shutdown()
            os._exit(1)
        handles.append(handle)  # SIGTERM: uvicorn stops, then the finally below
        info = tm.scheduler_info
        state.set_engine(tm, handle.named())
        logger.info(
            "serving %s on %s (mode=%s, device=%s, KV pool %d tokens, context %d)",
            args.served_model_name, advertised_url(args.host, args.port),
            args.disaggregation_mode, info["device"],
            info["max_total_num_tokens"], info["context_length"],
        )

    # The scheduler processes spawn first; the HTTP side's imports overlap with theirs.
    threading.Thread(target=start_engine, name="engine-start", daemon=True).start()
    import uvicorn

    from sglang.srt.entrypoints.http_server import create_app

    try:
        uvicorn.run(
            create_app(state), host=args.host, port=args.port, log_level="warning",
            timeout_keep_alive=5,
        )
    finally:
        for handle in handles:
            handle.shutdown()


if __name__ == "__main__":
    launch_server(prepare_server_args(sys.argv[1:]))
