"""Every launch_server flag: its name (SGLang's), its default, its validation."""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass
from typing import Optional

from sglang.srt.utils.network import DEFAULT_BOOTSTRAP_PORT, host_port

DISAGG_MODES = ("null", "prefill", "decode")
TRANSFER_BACKENDS = ("mooncake", "mooncake_tcp", "nixl", "fake")
# SGLang's names; bf16/fp16 are aliases of bfloat16/float16. fp8 pages are stored as fp8 and
# dequantized on read.
KV_CACHE_DTYPES = ("auto", "bf16", "bfloat16", "fp16", "float16", "fp8_e4m3", "fp8_e5m2")
SCHEDULE_POLICIES = ("fcfs", "lpm")
# how --dp-size replicas share the requests (SGLang's names; a prefill follows the room)
LOAD_BALANCE_METHODS = ("round_robin", "follow_bootstrap_room")


@dataclass
class ServerArgs:
    model_path: str
    tokenizer_path: Optional[str] = None
    host: str = "127.0.0.1"
    port: int = 30000
    device: Optional[str] = None  # cpu | cuda; None = cuda when available
    base_gpu_id: int = 0
    dtype: str = "auto"
    load_format: str = "auto"  # auto | safetensors | dummy
    context_length: Optional[int] = None
    page_size: int = 1
    max_total_tokens: Optional[int] = None
    mem_fraction_static: Optional[float] = None
    max_running_requests: Optional[int] = None
    chunked_prefill_size: int = 8192
    max_prefill_tokens: int = 16384
    disable_radix_cache: bool = False
    random_seed: Optional[int] = None
    served_model_name: Optional[str] = None
    log_level: str = "info"
    skip_server_warmup: bool = False
    trust_remote_code: bool = False
    revision: Optional[str] = None
    tp_size: int = 1
    # several nodes (SGLang's meanings): the TP ranks split evenly over --nnodes machines; node 0
    # serves HTTP, the others run only their scheduler ranks (and a /health page)
    nnodes: int = 1
    node_rank: int = 0
    dist_init_addr: Optional[str] = None  # HOST:PORT of the torch.distributed rendezvous
    # --dp-size N: N scheduler replicas (each tp_size ranks) behind this HTTP server
    dp_size: int = 1
    load_balance_method: str = "round_robin"
    kv_cache_dtype: str = "auto"
    schedule_policy: str = "fcfs"
    max_queued_requests: Optional[int] = None
    stream_interval: int = 1
    chat_template: Optional[str] = None
    # operations
    api_key: Optional[str] = None
    enable_metrics: bool = False
    watchdog_timeout: float = 300.0
    log_requests: bool = False
    log_requests_level: int = 2
    enable_cache_report: bool = False
    # PD disaggregation
    disaggregation_mode: str = "null"
    disaggregation_transfer_backend: str = "mooncake"
    disaggregation_bootstrap_port: int = DEFAULT_BOOTSTRAP_PORT
    disaggregation_ib_device: Optional[str] = None
    num_reserved_decode_tokens: int = 512
    disaggregation_decode_polling_interval: int = 1

    def __post_init__(self) -> None:
        if self.tokenizer_path is None:
            self.tokenizer_path = self.model_path
        if self.served_model_name is None:
            self.served_model_name = self.model_path
        if self.random_seed is None:
            self.random_seed = 42
        self.check()

    def check(self) -> None:
        def bad(msg: str) -> None:
            raise ValueError(msg)

        if self.page_size < 1:
            bad(f"--page-size must be >= 1, got {self.page_size}")
        if self.dtype not in ("auto", "bfloat16", "float16", "float32", "half", "float"):
            bad(f"--dtype must be auto, bfloat16, float16 or float32, got {self.dtype!r}")
        if self.load_format not in ("auto", "safetensors", "dummy"):
            bad(f"--load-format must be auto, safetensors or dummy, got {self.load_format!r}")
        if self.device not in (None, "cpu", "cuda"):
            bad(f"--device must be cpu or cuda, got {self.device!r}")
        if self.mem_fraction_static is not None and not 0 < self.mem_fraction_static < 1:
            bad(f"--mem-fraction-static must be in (0, 1), got {self.mem_fraction_static}")
        if self.max_total_tokens is not None and self.max_total_tokens < self.page_size:
            bad(f"--max-total-tokens {self.max_total_tokens} is below one page ({self.page_size})")
        if self.chunked_prefill_size != -1 and self.chunked_prefill_size < self.page_size:
            bad(
                f"--chunked-prefill-size {self.chunked_prefill_size} must be -1 (off) or at "
                f"least one page ({self.page_size})"
            )
        if self.max_prefill_tokens < 1:
            bad(f"--max-prefill-tokens must be >= 1, got {self.max_prefill_tokens}")
        if self.tp_size < 1:
            bad(f"--tp-size must be >= 1, got {self.tp_size}")
        self._check_nodes(bad)
        self._check_dp(bad)
        if self.kv_cache_dtype not in KV_CACHE_DTYPES:
            bad(f"--kv-cache-dtype must be one of {', '.join(KV_CACHE_DTYPES)}, "
                f"got {self.kv_cache_dtype!r}")
        if self.schedule_policy not in SCHEDULE_POLICIES:
            bad(f"--schedule-policy must be one of {', '.join(SCHEDULE_POLICIES)}, "
                f"got {self.schedule_policy!r}")
        if self.max_queued_requests is not None and self.max_queued_requests < 1:
            bad(f"--max-queued-requests must be >= 1, got {self.max_queued_requests}")
        if self.stream_interval < 1:
            bad(f"--stream-interval must be >= 1, got {self.stream_interval}")
        if self.chat_template is not None:
            from sglang.srt.chat_templates import load_chat_template

            load_chat_template(self.chat_template)  # raises ValueError naming the value
        if self.watchdog_timeout <= 0:
            bad(f"--watchdog-timeout must be > 0 seconds, got {self.watchdog_timeout}")
        if self.disaggregation_mode not in DISAGG_MODES:
            bad(f"--disaggregation-mode must be one of {DISAGG_MODES}")
        if self.disaggregation_transfer_backend not in TRANSFER_BACKENDS:
            bad(f"--disaggregation-transfer-backend must be one of {TRANSFER_BACKENDS}")
        if self.disaggregation_mode == "prefill" and self.disaggregation_transfer_backend == "fake":
            bad("the fake transfer backend works on decode servers only (as in SGLang)")

    def _check_nodes(self, bad) -> None:
        if self.nnodes < 1:
            bad(f"--nnodes must be >= 1, got {self.nnodes}")
        if not 0 <= self.node_rank < self.nnodes:
            bad(f"--node-rank must be in [0, {self.nnodes}) for --nnodes {self.nnodes}, "
                f"got {self.node_rank}")
        if self.tp_size % self.nnodes:
            bad(f"--tp-size {self.tp_size} must be a multiple of --nnodes {self.nnodes} "
                "(each node runs tp-size / nnodes ranks)")
        if self.nnodes > 1 and not self.dist_init_addr:
            bad(f"--nnodes {self.nnodes} needs --dist-init-addr HOST:PORT (an address of node 0 "
                "that every node can reach)")
        if self.dist_init_addr is not None:
            host, sep, port = self.dist_init_addr.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                bad(f"--dist-init-addr must be HOST:PORT, got {self.dist_init_addr!r}")

    def _check_dp(self, bad) -> None:
        if self.dp_size < 1:
            bad(f"--dp-size must be >= 1, got {self.dp_size}")
        if self.load_balance_method not in LOAD_BALANCE_METHODS:
            bad(f"--load-balance-method must be one of {', '.join(LOAD_BALANCE_METHODS)}, "
                f"got {self.load_balance_method!r}")
        if self.dp_size > 1 and self.nnodes > 1:
            bad(f"--dp-size {self.dp_size} with --nnodes {self.nnodes}: data parallelism runs "
                "on one node here; start one server per node behind a router instead")
        if self.disaggregation_mode == "prefill" and self.load_balance_method == "round_robin":
            # as SGLang: a decode finds the prefill replica of a request as room % dp_size
            self.load_balance_method = "follow_bootstrap_room"

    @property
    def url(self) -> str:
        return f"http://{host_port(self.host, self.port)}"

    @property
    def effective_chunk_size(self) -> int:
        return self.chunked_prefill_size if self.chunked_prefill_size > 0 else 1 << 30

    @staticmethod
    def add_cli_args(parser: argparse.ArgumentParser) -> None:
        d = ServerArgs.__dataclass_fields__
        a = parser.add_argument
        a("--model-path", "--model", required=True, help="local HF-format directory or hub id")
        a("--tokenizer-path", default=None)
        a("--host", default=d["host"].default)
        a("--port", type=int, default=d["port"].default)
        a("--device", default=None, choices=["cpu", "cuda"])
        a("--base-gpu-id", type=int, default=0)
        a("--dtype", default="auto")
        a("--load-format", default="auto", choices=["auto", "safetensors", "dummy"])
        a("--context-length", type=int, default=None)
        a("--page-size", type=int, default=1)
        a("--max-total-tokens", type=int, default=None)
        a("--mem-fraction-static", type=float, default=None)
        a("--max-running-requests", type=int, default=None)
        a("--chunked-prefill-size", type=int, default=d["chunked_prefill_size"].default)
        a("--max-prefill-tokens", type=int, default=d["max_prefill_tokens"].default)
        a("--disable-radix-cache", action="store_true")
        a("--random-seed", type=int, default=None)
        a("--served-model-name", default=None)
        a("--log-level", default="info")
        a("--skip-server-warmup", action="store_true")
        a("--trust-remote-code", action="store_true", help="accepted for compatibility")
        a("--revision", default=None)
        a("--tp-size", "--tensor-parallel-size", type=int, default=1)
        a("--nnodes", type=int, default=1, help="machines the TP ranks are spread over")
        a("--node-rank", type=int, default=0, help="this machine's index (0 serves HTTP)")
        a("--dist-init-addr", "--nccl-init-addr", default=None,
          help="HOST:PORT on node 0 where the ranks meet (torch.distributed rendezvous)")
        a("--dp-size", "--data-parallel-size", type=int, default=1,
          help="scheduler replicas (each --tp-size ranks) behind this server")
        a("--load-balance-method", default=d["load_balance_method"].default,
          help="how requests go to the DP replicas: " + " or ".join(LOAD_BALANCE_METHODS)
          + " (bootstrap_room %% dp-size; a prefill server always follows the room)")
        a("--kv-cache-dtype", default="auto", choices=list(KV_CACHE_DTYPES))
        a("--schedule-policy", default=d["schedule_policy"].default,
          choices=list(SCHEDULE_POLICIES))
        a("--max-queued-requests", type=int, default=None,
          help="requests waiting beyond this get HTTP 429")
        a("--stream-interval", type=int, default=1, help="stream every N output tokens")
        a("--chat-template", default=None, help="a Jinja template file, or a template name")
        a("--api-key", default=None, help="require 'Authorization: Bearer KEY' (not on /health)")
        a("--enable-metrics", action="store_true", help="serve Prometheus metrics on /metrics")
        a("--watchdog-timeout", type=float, default=d["watchdog_timeout"].default,
          help="a scheduler step longer than this dumps its stack and exits")
        a("--log-requests", action="store_true")
        a("--log-requests-level", type=int, default=2, choices=[0, 1, 2, 3])
        a("--enable-cache-report", action="store_true",
          help="report cached_tokens in the OpenAI usage")
        a("--disaggregation-mode", default="null", choices=list(DISAGG_MODES))
        a(
            "--disaggregation-transfer-backend",
            default="mooncake",
            choices=list(TRANSFER_BACKENDS),
        )
        a("--disaggregation-bootstrap-port", type=int, default=DEFAULT_BOOTSTRAP_PORT)
        a("--disaggregation-ib-device", default=None, help="RDMA NIC list, e.g. mlx5_0,mlx5_1")
        a("--num-reserved-decode-tokens", type=int, default=512)
        a("--disaggregation-decode-polling-interval", type=int, default=1)

    @classmethod
    def from_cli_args(cls, args: argparse.Namespace) -> "ServerArgs":
        names = [f.name for f in dataclasses.fields(cls)]
        return cls(**{n: getattr(args, n) for n in names if hasattr(args, n)})


def prepare_server_args(argv: list[str]) -> ServerArgs:
    from sglang.srt.unsupported_flags import refused_flag

    parser = argparse.ArgumentParser(prog="python -m sglang.launch_server")
    ServerArgs.add_cli_args(parser)
    refused = refused_flag(argv)
    if refused:
        parser.error(refused)  # exit code 2
    args = parser.parse_args(argv)
    try:
        return ServerArgs.from_cli_args(args)
    except ValueError as e:
        parser.error(str(e))
        raise
