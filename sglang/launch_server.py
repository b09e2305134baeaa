"""python -m sglang.launch_server --model-path M [--port P] [--disaggregation-mode MODE]"""

from __future__ import annotations

import logging
import sys

from sglang.srt.server_args import ServerArgs, prepare_server_args


def launch_server(args: ServerArgs) -> None:
    import uvicorn

    from sglang.srt.entrypoints.http_server import create_app
    from sglang.srt.entrypoints.launcher import install_signal_handlers, launch_engine

    logging.basicConfig(
        level=args.log_level.upper(),
        format=f"[%(asctime)s {args.disaggregation_mode}-http] %(levelname)s %(name)s: %(message)s",
    )
    tm, handle = launch_engine(args)
    install_signal_handlers(handle)
    info = tm.scheduler_info
    logging.getLogger("sglang").info(
        "serving %s on %s (mode=%s, device=%s, KV pool %d tokens, context %d)",
        args.served_model_name, args.url, args.disaggregation_mode, info["device"],
        info["max_total_num_tokens"], info["context_length"],
    )
    try:
        uvicorn.run(
            create_app(tm), host=args.host, port=args.port, log_level="warning",
            timeout_keep_alive=5,
        )
    finally:
        handle.shutdown()


if __name__ == "__main__":
    launch_server(prepare_server_args(sys.argv[1:]))
