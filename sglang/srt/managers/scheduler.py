"""The scheduler: owns the model and the KV pool, batches requests continuously.

Each step: let the PD queues (if any) move requests, run one extend pass (new prompts, chunked)
or else one decode pass over the running requests, queue the results in ``outbox``; the process
loop around it is scheduler_loop.py. --tp-size N: one Scheduler per rank (process); every rank
schedules the same messages the same (deterministic) way, so all meet in the same forward
passes.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Optional

import torch

from sglang.srt.base_types import ABORTED, ForwardMode
from sglang.srt.distributed import tp_min_int
from sglang.srt.env import envs
from sglang.srt.managers.io_struct import AbortReq, ReqOutput, RpcReq, TokenizedGenerateReqInput
from sglang.srt.managers.disagg_protocol import Admissions, DisaggLayer, Load, NoDisagg, PDContext
from sglang.srt.managers.admission import (
    cached_prefix_len,
    order_longest_prefix_first,
    queue_full_message,
    stream_due,
)
from sglang.srt.managers.output_processor import OutputProcessor
from sglang.srt.managers.req import Req
from sglang.srt.managers.scheduler_loop import SchedulerLoopMixin
from sglang.srt.managers.scheduler_reports import SchedulerReportsMixin
from sglang.srt.managers.schedule_policy import build_decode, build_extend, plan_extend
from sglang.srt.managers.watchdog import apply_test_hooks
from sglang.srt.mem_cache.cache_manager import KVCacheManager
from sglang.srt.mem_cache.memory_pool import KVPool
from sglang.srt.mem_cache.pool_sizing import kv_pool_pages
from sglang.srt.metrics.scheduler_stats import SchedulerStatsRecorder
from sglang.srt.configs.model_config import ModelConfig
from sglang.srt.model_executor.model_runner import ModelRunner
from sglang.srt.sampling.sampling_params import SamplingParams
from sglang.srt.server_args import ServerArgs
from sglang.srt.utils.device import resolve_device

logger = logging.getLogger(__name__)


class Scheduler(SchedulerLoopMixin, SchedulerReportsMixin):
    def __init__(
        self,
        args: ServerArgs,
        runner: Any = None,
        tokenizer: Any = None,
        make_disagg: Optional[Callable[[PDContext], DisaggLayer]] = None,
        tp_rank: int = 0,
        dp_rank: int = 0,
    ):
        """``runner`` (default: the model of ``args.model_path``) and ``tokenizer`` are seams
        for in-process tests; ``make_disagg`` builds the PD layer of a prefill or decode
        server (the process entry passes it: managers do not import disaggregation);
        ``tp_rank``: this process's TP rank (the group is joined before); ``dp_rank``: its
        replica (``--dp-size``)."""
        self.args = args
        self.tp_rank, self.dp_rank = tp_rank, dp_rank
        self.device = resolve_device(args.device)
        if self.device == "cuda":
            torch.cuda.set_device(args.base_gpu_id + tp_rank)
        if envs.num_threads:
            torch.set_num_threads(envs.num_threads)
        torch.manual_seed(args.random_seed)
        self.runner = runner if runner is not None else self._load_model(args, tp_rank)
        self.model_config = self.runner.config
        self.context_len = self.model_config.context_length
        layout = self.runner.kv_layout(args.page_size, args.kv_cache_dtype)
        pages = kv_pool_pages(layout.bytes_per_token, args.page_size, self.device,
                              args.max_total_tokens, args.mem_fraction_static, args.dp_size)
        pages = tp_min_int(pages)  # every rank must schedule on the same pool size
        self.pool = KVPool(layout, pages, self.device)
        self.runner.set_kv_pool(self.pool)
        self.max_running = args.max_running_requests or 128
        self.chunk_size = args.effective_chunk_size
        self.test_hooks = bool(envs.test_step_delay or envs.test_block_scheduler_rid)
        enable_radix = not args.disable_radix_cache and args.disaggregation_mode != "decode"
        self.cache = KVCacheManager(
            self.pool.num_pages, args.page_size, 2 * self.max_running + 8, self.context_len,
            enable_radix, self.device,
        )
        if tokenizer is None:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(args.tokenizer_path)
        self.out = OutputProcessor(tokenizer, self.model_config.eos_token_ids)
        self.waiting: list[Req] = []
        self.running: list[Req] = []
        self.outbox: list[ReqOutput] = []
        self.forward_ct = self.num_received_reqs = 0
        self.metrics = SchedulerStatsRecorder(args.enable_metrics, dp_rank)  # to the HTTP process
        self.pd = args.disaggregation_mode != "null"
        if self.pd and make_disagg is None:
            raise ValueError(f"--disaggregation-mode {args.disaggregation_mode} needs a PD layer")
        self.disagg: DisaggLayer = make_disagg(PDContext(
            args, self.pool, self.cache, self.metrics, self.max_running, self.device,
            args.tp_size, tp_rank, getattr(self.model_config, "num_heads", 0),
            getattr(self.model_config, "num_kv_heads", 0),  # (in-process tests' stub models)
            dp_rank,
        )) if self.pd else NoDisagg()

    @staticmethod
    def _load_model(args: ServerArgs, tp_rank: int = 0) -> ModelRunner:
        config = ModelConfig.from_pretrained(args.model_path, args.dtype, args.context_length)
        return ModelRunner(config, resolve_device(args.device), args.base_gpu_id + tp_rank,
                           args.load_format, args.random_seed)

    def warmup(self) -> None:
        """One short request through the whole path before serving (not in PD modes: a PD
        request needs its peer)."""
        if self.args.skip_server_warmup or self.pd:
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

    # ---- messages ----------------------------------------------------------------------
    def handle(self, msg: Any) -> None:
        if isinstance(msg, TokenizedGenerateReqInput):
            req = Req(msg, self.context_len)
            self.num_received_reqs += 1
            refusal = (queue_full_message(self._num_queued(), self.args.max_queued_requests)
                       if self.args.max_queued_requests else None)
            if refusal is not None:  # --max-queued-requests: HTTP 429
                req.abort(refusal, 429)
                self.outbox.append(self.out.make_output(req))
            else:
                self.disagg.add(req)
        elif isinstance(msg, AbortReq):
            self.abort(msg.rid)
        elif isinstance(msg, RpcReq):
            self.send(self.rpc(msg))
        else:
            logger.error("scheduler got an unknown message %r", type(msg))

    def _num_queued(self) -> int:
        return len(self.waiting) + sum(self.disagg.queue_sizes().values())

    def busy(self) -> bool:
        return bool(self.running or self.waiting or self.disagg.busy())

    def abort(self, rid: str) -> None:
        for queue in (self.waiting, self.running):
            for req in list(queue):
                if rid in ("", req.rid):
                    queue.remove(req)
                    req.abort(ABORTED, 499)
                    self.finish(req)
        for req in self.disagg.abort(rid):
            req.abort(ABORTED, 499)  # keeps a reason the layer already set
            self.finish(req)

    def finish(self, req: Req, cache: bool = True) -> None:
        """A request is done: free its KV (keeping whole pages in the prefix cache)."""
        aborted = req.finished_reason is None or req.finished_reason["type"] == "abort"
        self.cache.release(req, cache=cache and not aborted)
        self.disagg.release(req)
        self.outbox.append(self.out.make_output(req))

    # ---- one iteration -----------------------------------------------------------------
    def step(self) -> bool:
        """Take what the PD layer admits, run at most one forward pass; returns whether one
        ran."""
        self._apply(self.disagg.poll(Load(len(self.running), len(self.waiting),
                                          self.max_running)))
        batch = self._next_batch()
        if batch is None:
            return False
        if self.test_hooks:
            apply_test_hooks(batch.reqs)
        logits = self.runner.forward(batch.forward)
        self.forward_ct += 1
        self.metrics.on_batch(batch, self.cache.page_size)
        produced = set(map(id, self.out.process(batch, logits)))
        for req, n in zip(batch.reqs, batch.extend_lens):
            req.kv_len += n
        held = (set(map(id, self.disagg.after_prefill(batch)))
                if batch.mode == ForwardMode.EXTEND else set())
        for req in batch.reqs:
            if id(req) not in produced:
                if req.seq_len > req.kv_len:
                    self.waiting.insert(0, req)  # an unfinished chunked prefill continues first
            elif id(req) in held:
                continue  # the PD layer ends it once its transfer is done
            elif req.finished:
                self.finish(req)
            else:
                if req not in self.running:
                    self.running.append(req)
                self._maybe_stream(req)
        self.running = [r for r in self.running if not r.finished]
        return True

    def _maybe_stream(self, req: Req) -> None:
        if stream_due(req, self.args.stream_interval) if req.stream else req.return_logprob:
            self.outbox.append(self.out.make_output(req))

    def _apply(self, adm: Admissions) -> None:
        for req in adm.ended:
            self.finish(req)
        self.waiting.extend(adm.admitted)
        for d in adm.decoded:  # the prefill computed the prompt and the first token
            req = d.req
            req.kv_len = len(req.origin_input_ids)
            req.cached_tokens = d.cached_tokens
            if req.return_logprob:
                req.pending_logprobs.append((d.logprob, d.first_token))
                req.pending_top.append(d.top_logprobs[: req.top_logprobs_num])
            self.out.append_token(req, d.first_token)
            if req.finished:
                self.finish(req)
            else:
                self.running.append(req)
                if req.stream or req.return_logprob:
                    self.outbox.append(self.out.make_output(req))

    def _next_batch(self):
        if self.args.schedule_policy == "lpm":
            order_longest_prefix_first(self.waiting, cached_prefix_len(self.cache))
        if self.waiting and len(self.running) < self.max_running:
            reserve = len(self.running)  # one page of decode headroom per running request
            reqs, lens = plan_extend(
                self.cache, self.waiting, self.chunk_size,
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
