"""A node other than 0 of a multi-node server (``--nnodes N --node-rank K``, K >= 1), as in
SGLang: it runs only its TP ranks (no tokenizer, no API: node 0's rank 0 broadcasts the work);
a health page on ``--host:--port`` answers ``/health`` 200 once its ranks are ready, 503 before
and once one has exited. The process ends (code 1) when one of its ranks does, e.g. because
node 0 went away."""

from __future__ import annotations

import logging
import os
import threading
import time

from sglang.srt.entrypoints.launcher import resolve_model_path, start_schedulers
from sglang.srt.server_args import ServerArgs

logger = logging.getLogger(__name__)


def run_node(args: ServerArgs) -> None:
    import uvicorn
    from fastapi import FastAPI, Response

    handles: list = []

    def healthy() -> bool:
        return bool(handles) and all(p.is_alive() for p in handles[0].procs)

    app = FastAPI()

    @app.get("/health")
    @app.get("/health_generate")
    async def health() -> Response:
        return Response(status_code=200 if healthy() else 503)

    def start() -> None:
        try:
            resolve_model_path(args)
            handle, _ = start_schedulers(args)
        except BaseException as e:  # noqa: BLE001 - any start-up failure ends the process
            logger.error("node %d failed to start: %s", args.node_rank, e)
            logging.shutdown()
            os._exit(1)
        handles.append(handle)
        logger.info("node %d of %d: TP ranks ready (tp-size %d)", args.node_rank, args.nnodes,
                    args.tp_size)
        while healthy():
            time.sleep(0.5)
        codes = [p.exitcode for p in handle.procs]
        logger.error("node %d: a TP rank exited (codes %s); the node stops", args.node_rank, codes)
        handle.shutdown()
        logging.shutdown()
        os._exit(1)

    threading.Thread(target=start, name="node-start", daemon=True).start()
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    finally:
        for handle in handles:
            handle.shutdown()
