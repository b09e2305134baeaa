"""The scheduler process: owns the model and the KV pool, batches requests continuously.

One loop: take messages, let the PD queues (if any) move requests, run one extend pass (new
prompts, chunked) or else one decode pass over the running requests, send the results.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import psutil
import torch
import zmq

from sglang.srt.disaggregation.base.conn import ABORTED
from sglang.srt.env import envs
from sglang.srt.managers.io_struct import (
    AbortReq,
    BatchReqOutput,
    ReqOutput,
    RpcOut,
    RpcReq,
    SchedulerReady,
    TokenizedGenerateReqInput,
)
from sglang.srt.managers.admission import (
    cached_prefix_len,
    order_longest_prefix_first,
    queue_full_message,
    stream_due,
)
from sglang.srt.managers.output_processor import OutputProcessor
from sglang.srt.managers.req import Req
from sglang.srt.managers.schedule_policy import build_decode, build_extend, plan_extend
from sglang.srt.managers.watchdog import Watchdog, apply_test_hooks
from sglang.srt.mem_cache.cache_manager import KVCacheManager
from sglang.srt.mem_cache.memory_pool import KVPool
from sglang.srt.metrics.scheduler_stats import SchedulerStatsRecorder
from sglang.srt.model_executor.model_config import ModelConfig
from sglang.srt.model_executor.model_runner import ModelRunner
from sglang.srt.sampling.sampling_params import SamplingParams
from sglang.srt.server_args import ServerArgs

logger = logging.getLogger(__name__)

CPU_KV_FRACTION = 0.1  # default share of free host memory for the KV pool on CPU
CPU_MAX_POOL_TOKENS = 1 << 18


def resolve_device(args: ServerArgs) -> str:
    if args.device:
        if args.device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("--device cuda was given but no CUDA device is available")
        return args.device
    return "cuda" if torch.cuda.is_available() else "cpu"


class Scheduler:
    def __init__(self, args: ServerArgs):
        self.args = args
        self.device = resolve_device(args)
        if self.device == "cuda":
            torch.cuda.set_device(args.base_gpu_id)
        if envs.num_threads:
            torch.set_num_threads(envs.num_threads)
        torch.manual_seed(args.random_seed)
        self.model_config = ModelConfig.from_pretrained(
            args.model_path, args.dtype, args.context_length
        )
        self.runner = ModelRunner(
            self.model_config, self.device, args.base_gpu_id, args.load_format, args.random_seed
        )
        self.context_len = self.model_config.context_length
        layout = self.runner.kv_layout(args.page_size, args.kv_cache_dtype)
        self.pool = KVPool(layout, self._pool_pages(layout.bytes_per_token), self.device)
        self.runner.set_kv_pool(self.pool)
        self.max_running = args.max_running_requests or 128
        enable_radix = not args.disable_radix_cache and args.disaggregation_mode != "decode"
        self.cache = KVCacheManager(
            self.pool.num_pages, args.page_size, 2 * self.max_running + 8, self.context_len,
            enable_radix, self.device,
        )
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(args.tokenizer_path)
        self.out = OutputProcessor(self.tokenizer, self.model_config.eos_token_ids)
        self.waiting: list[Req] = []
        self.running: list[Req] = []
        self.outbox: list[ReqOutput] = []
        self.forward_ct = 0
        self.metrics = SchedulerStatsRecorder(args.enable_metrics)  # pushed to the HTTP process
        self.disagg: Any = None
        if args.disaggregation_mode == "prefill":
            from sglang.srt.disaggregation.prefill import PrefillQueues

            self.disagg = PrefillQueues(self)
        elif args.disaggregation_mode == "decode":
            from sglang.srt.disaggregation.decode import DecodeQueues

            self.disagg = DecodeQueues(self)

    def warmup(self) -> None:
        """One short request through the whole path before serving (not in PD modes: a PD
        request needs its peer)."""
        if self.args.skip_server_warmup or self.disagg is not None:
            return
        sp = SamplingParams(max_new_tokens=2, temperature=0.0, ignore_eos=True)
        self.waiting.append(
            Req(TokenizedGenerateReqInput("warmup", list(range(1, 9)), sp), self.context_len)
        )
        t0 = time.monotonic()
        while self.waiting or self.running:
            self.step()
        self.outbox.clear()
        self.cache.flush()
        logger.info("warm-up done in %.2fs", time.monotonic() - t0)

    def _pool_pages(self, bytes_per_token: int) -> int:
        a = self.args
        if a.max_total_tokens:
            tokens = a.max_total_tokens
        elif self.device == "cuda":
            free, total = torch.cuda.mem_get_info()
            frac = a.mem_fraction_static or 0.85
            tokens = int((free - total * (1 - frac)) // bytes_per_token)
        else:
            frac = a.mem_fraction_static or CPU_KV_FRACTION
            avail = psutil.virtual_memory().available
            tokens = min(int(avail * frac // bytes_per_token), CPU_MAX_POOL_TOKENS)
        pages = tokens // a.page_size
        if pages < 1:
            raise RuntimeError(
                f"no room for a KV pool ({bytes_per_token} bytes per token); "
                "lower the model size or raise --mem-fraction-static / --max-total-tokens"
            )
        return pages

    def ready_info(self) -> dict[str, Any]:
        mc = self.model_config
        info = {
            "context_length": self.context_len,
            "max_total_num_tokens": self.pool.size,
            "max_running_requests": self.max_running,
            "page_size": self.args.page_size,
            "device": self.device,
            "dtype": str(mc.torch_dtype),
            "kv_bytes_per_token": self.pool.layout.bytes_per_token,
            "kv_cache_storage_dtype": self.pool.dtype_name,
            "eos_token_ids": sorted(mc.eos_token_ids),
            "vocab_size": mc.vocab_size,
            "architecture": mc.architecture,
            "cpu_kernels": self.runner.attn_backend.kernel is not None,
        }
        if self.disagg is not None:
            info["disaggregation"] = self.disagg.describe()
        return info

    # ---- messages ----------------------------------------------------------------------
    def handle(self, msg: Any) -> None:
        if isinstance(msg, TokenizedGenerateReqInput):
            req = Req(msg, self.context_len)
            refusal = (queue_full_message(self._num_queued(), self.args.max_queued_requests)
                       if self.args.max_queued_requests else None)
            if refusal is not None:  # --max-queued-requests: HTTP 429
                req.abort(refusal, 429)
                self.outbox.append(self.out.make_output(req))
            elif self.disagg is not None:
                self.disagg.add(req)
            else:
                self.waiting.append(req)
        elif isinstance(msg, AbortReq):
            self.abort(msg.rid)
        elif isinstance(msg, RpcReq):
            self.send(self.rpc(msg))
        else:
            logger.error("scheduler got an unknown message %r", type(msg))

    def _num_queued(self) -> int:
        n = len(self.waiting)
        if self.disagg is not None:
            n += sum(v for k, v in self.disagg.info().items()
                     if k.endswith("_queue") and isinstance(v, int))
        return n

    def rpc(self, msg: RpcReq) -> RpcOut:
        if msg.method == "get_info":
            return RpcOut(msg.rpc_id, self.info())
        if msg.method == "flush_cache":
            busy = self.running or self.waiting or (self.disagg and self.disagg.busy())
            ok = not busy and self.cache.flush()
            return RpcOut(msg.rpc_id, ok)
        return RpcOut(msg.rpc_id, error=f"unknown method {msg.method}")

    def info(self) -> dict[str, Any]:
        d = {
            "kv_pool": self.cache.stats(),
            "num_running_reqs": len(self.running),
            "num_waiting_reqs": len(self.waiting),
            "forward_ct": self.forward_ct,
        }
        if self.disagg is not None:
            d["disaggregation"] = self.disagg.info()
        return d

    def abort(self, rid: str) -> None:
        for queue in (self.waiting, self.running):
            for req in list(queue):
                if rid in ("", req.rid):
                    queue.remove(req)
                    req.abort(ABORTED, 499)
                    self.finish(req)
        if self.disagg is not None:
            self.disagg.abort(rid)

    def finish(self, req: Req, cache: bool = True) -> None:
        """A request is done: free its KV (keeping whole pages in the prefix cache)."""
        aborted = req.finished_reason is None or req.finished_reason["type"] == "abort"
        self.cache.release(req, cache=cache and not aborted)
        if self.disagg is not None:
            self.disagg.release(req)
        self.outbox.append(self.out.make_output(req))

    # ---- one iteration -----------------------------------------------------------------
    def step(self) -> bool:
        """Run at most one forward pass; returns whether anything ran."""
        if self.disagg is not None:
            self.disagg.step()
        batch = self._next_batch()
        if batch is None:
            return False
        apply_test_hooks(batch.reqs)
        logits = self.runner.forward(batch.forward)
        self.forward_ct += 1
        self.metrics.on_batch(batch, self.cache.page_size)
        produced = self.out.process(batch, logits)
        for req, n in zip(batch.reqs, batch.extend_lens):
            req.kv_len += n
        if self.disagg is not None:
            self.disagg.after_forward(batch)
        produced_set = set(map(id, produced))
        for req in batch.reqs:
            if id(req) not in produced_set:
                if req.seq_len > req.kv_len:
                    self.waiting.insert(0, req)  # an unfinished chunked prefill continues first
                continue
            if self.disagg is not None and self.disagg.takes(req):
                continue
            if req.finished:
                self.finish(req)
            else:
                if req not in self.running:
                    self.running.append(req)
                if (stream_due(req, self.args.stream_interval) if req.stream
                        else req.return_logprob):
                    self.outbox.append(self.out.make_output(req))
        self.running = [r for r in self.running if not r.finished]
        return True

    def _next_batch(self):
        if self.args.schedule_policy == "lpm":
            order_longest_prefix_first(self.waiting, cached_prefix_len(self.cache))
        if self.waiting and len(self.running) < self.max_running:
            reserve = len(self.running)  # one page of decode headroom per running request
            reqs, lens = plan_extend(
                self.cache, self.waiting, self.args.effective_chunk_size,
                self.max_running - len(self.running), reserve, self.args.max_prefill_tokens,
            )
            if reqs:
                return build_extend(self.cache, reqs, lens)
        if not self.running:
            return None
        self._make_room_for_decode()
        return build_decode(self.cache, self.running) if self.running else None

    def _make_room_for_decode(self) -> None:
        for req in list(self.running):
            while req in self.running and not self.cache.grow(req, req.seq_len):
                victim = self.running[-1]
                self.running.remove(victim)
                if victim is req and not self.running:
                    req.abort("KV pool exhausted by a single request; raise --max-total-tokens")
                    self.finish(req, cache=False)
                    break
                logger.info("retract %s: KV pool full", victim)
                self.cache.release(victim, cache=True)
                self.waiting.insert(0, victim)

    # ---- loop --------------------------------------------------------------------------
    def run(self, recv: zmq.Socket, send: zmq.Socket) -> None:
        self._send_sock = send
        poller = zmq.Poller()
        poller.register(recv, zmq.POLLIN)
        parent = os.getppid()
        last_parent_check = time.monotonic()
        watchdog = Watchdog(self.args.watchdog_timeout)
        while True:
            busy = bool(self.running or self.waiting or (self.disagg and self.disagg.busy()))
            timeout = 0 if busy else 50
            while dict(poller.poll(timeout)).get(recv):
                self.handle(recv.recv_pyobj())
                timeout = 0
            watchdog.step_begin()
            ran = self.step()
            self.flush_outbox()
            self.metrics.maybe_push(self)
            watchdog.step_end()
            if not ran and busy:
                time.sleep(0.001)
            now = time.monotonic()
            if now - last_parent_check > 1.0:
                last_parent_check = now
                if os.getppid() != parent:
                    logger.warning("parent process died; scheduler exits")
                    return

    def send(self, obj: Any) -> None:
        self._send_sock.send_pyobj(obj)

    def flush_outbox(self) -> None:
        if self.outbox:
            self.send(BatchReqOutput(self.outbox))
            self.outbox = []


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
        sched = Scheduler(args)
        sched.warmup()
    except Exception as e:  # report start-up failures to the launcher, then exit
        logger.exception("scheduler failed to start")
        ready_pipe.send({"error": f"{type(e).__name__}: {e}"})
        return
    ready_pipe.send(SchedulerReady(sched.ready_info()))
    try:
        sched.run(recv, send)
    finally:
        if sched.disagg is not None:
            sched.disagg.shutdown()
