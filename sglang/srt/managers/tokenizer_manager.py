"""The HTTP process's side of the engine: send each request to the scheduler (checked and
tokenized by request_validation.py), gather its outputs, detokenize, stream."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Optional

import zmq
import zmq.asyncio

from sglang.srt.managers.data_parallel_controller import DataParallelController
from sglang.srt.managers.detokenizer import IncrementalDetokenizer
from sglang.srt.managers.io_struct import (
    AbortReq,
    BadRequestError,
    BatchReqOutput,
    GenerateReqInput,
    ReqOutput,
    RpcOut,
    RpcReq,
    TokenizedGenerateReqInput,
)
from sglang.srt.managers.request_logger import RequestLogger
from sglang.srt.managers.request_validation import RequestValidator
from sglang.srt.managers.scheduler_watch import SchedulerWatch
from sglang.srt.metrics.scheduler_stats import SchedulerStats
from sglang.srt.metrics.server_metrics import create_server_metrics
from sglang.srt.server_args import ServerArgs

logger = logging.getLogger(__name__)


@dataclass
class _ReqState:
    obj: GenerateReqInput
    created: float
    detok: IncrementalDetokenizer  # holds the output ids and the text released so far
    out: list[ReqOutput] = field(default_factory=list)
    event: asyncio.Event = field(default_factory=asyncio.Event)
    finished: bool = False
    meta: dict[str, Any] = field(default_factory=dict)
    mtrack: Any = None  # --enable-metrics: timing between outputs


class TokenizerManager(SchedulerWatch):
    def __init__(self, args: ServerArgs, scheduler_info: dict[str, Any], recv_addr: str,
                 send_addr: "str | list[str]", tokenizer: Any = None):
        """``send_addr``: the scheduler's address, or one per DP replica (``--dp-size``);
        ``tokenizer``: already loaded (the launcher loads it while the schedulers start)."""
        self.server_args = args
        self.model_path = args.model_path
        self.served_model_name = args.served_model_name
        if tokenizer is None:  # the launcher loads it while the scheduler starts
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(args.tokenizer_path)
        self.tokenizer = tokenizer
        if args.chat_template:  # the OpenAI chat route renders with the tokenizer's template
            from sglang.srt.chat_templates import load_chat_template

            self.tokenizer.chat_template = load_chat_template(args.chat_template)
        self.scheduler_info = scheduler_info
        self.context_length: int = scheduler_info["context_length"]
        self.max_total_num_tokens: int = scheduler_info["max_total_num_tokens"]
        self.validator = RequestValidator(args, scheduler_info, self.tokenizer)
        self._recv_addr = recv_addr
        self.dp = DataParallelController(
            [send_addr] if isinstance(send_addr, str) else send_addr, args.load_balance_method)
        self._states: dict[str, _ReqState] = {}
        self._rpc: dict[int, asyncio.Future] = {}
        self._rpc_ids = itertools.count(1)
        self._loop_task: Optional[asyncio.Task] = None
        self.last_receive = time.time()
        self.request_logger = RequestLogger(args.log_requests, args.log_requests_level)
        # set when the scheduler process is gone: every request then fails with this message
        self.scheduler_dead: Optional[str] = None
        self._watch_task: Optional[asyncio.Task] = None
        self.metrics = create_server_metrics(args)  # None without --enable-metrics
        if self.metrics is not None:  # the pool's size is known before the first snapshot comes
            self.metrics.on_message(SchedulerStats(max_total_num_tokens=self.max_total_num_tokens))

    # ---- plumbing ----------------------------------------------------------------------
    def _ensure_loop(self) -> None:
        if self._loop_task is None:
            ctx = zmq.asyncio.Context.instance()
            self._recv = ctx.socket(zmq.PULL)
            self._recv.bind(self._recv_addr)
            self.dp.connect(ctx)
            self._loop_task = asyncio.get_running_loop().create_task(self._handle_loop())

    async def _handle_loop(self) -> None:
        while True:
            msg = await self._recv.recv_pyobj()
            self.last_receive = time.time()
            if isinstance(msg, BatchReqOutput):
                for out in msg.outputs:
                    state = self._states.get(out.rid)
                    if state is None:
                        continue
                    state.out.append(out)
                    state.event.set()
                    if self.metrics is not None:
                        self.metrics.on_output(state, out)
            elif isinstance(msg, RpcOut):
                fut = self._rpc.pop(msg.rpc_id, None)
                if fut is not None and not fut.done():
                    fut.set_result(msg)
            elif self.metrics is not None:
                self.metrics.on_message(msg)  # the scheduler's stats snapshots

    async def rpc(self, method: str, timeout: float = 30, dp_rank: int = 0, **args: Any) -> Any:
        """Call ``method`` on the scheduler of DP replica ``dp_rank``."""
        self._ensure_loop()
        if self.scheduler_dead:
            raise RuntimeError(self.scheduler_dead)
        rpc_id = next(self._rpc_ids)
        fut = asyncio.get_running_loop().create_future()
        self._rpc[rpc_id] = fut
        await self.dp.send_to(dp_rank, RpcReq(rpc_id, method, args))
        try:
            out: RpcOut = await asyncio.wait_for(fut, timeout=timeout)
        finally:
            self._rpc.pop(rpc_id, None)
        if out.error:
            raise RuntimeError(out.error)
        return out.result

    # ---- requests ----------------------------------------------------------------------
    async def generate_request(
        self,
        obj: GenerateReqInput,
        request: Any = None,
        tokenized: Optional[TokenizedGenerateReqInput] = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """Run one normalized request; yields cumulative output dicts (one if not streaming).

        ``tokenized``: what ``self.validator.validate`` returned for ``obj``, if it was called.
        The text of each output only grows by appending: it holds whole characters only and
        never a part of a stop string that the final text will cut.
        """
        self._ensure_loop()
        if tokenized is None:
            tokenized = self.validator.validate(obj)
        if obj.rid in self._states:
            raise BadRequestError(f"duplicate request id {obj.rid!r}")
        sp = tokenized.sampling_params
        detok = IncrementalDetokenizer(
            self.tokenizer, sp.skip_special_tokens, sp.stop, trim_stop=not sp.no_stop_trim
        )
        state = _ReqState(obj, time.time(), detok)
        self._states[obj.rid] = state
        self.request_logger.received(obj, tokenized.input_ids)
        if self.scheduler_dead:
            self._fail(state, self.scheduler_dead)
        else:
            await self.dp.send_request(tokenized)
        try:
            while True:
                try:
                    await asyncio.wait_for(state.event.wait(), timeout=1.0)
                except asyncio.TimeoutError:
                    if request is not None and await request.is_disconnected():
                        logger.info("client disconnected; abort rid=%s", obj.rid)
                        self.abort_request(obj.rid)
                        return
                    continue
                state.event.clear()
                outs, state.out = state.out, []
                for out in outs:
                    self._apply(state, out)
                if state.finished or obj.stream:
                    result = self._result(state)
                    if state.finished:
                        self.request_logger.finished(obj.rid, result)
                    yield result
                if state.finished:
                    return
        finally:
            if not state.finished:
                self.abort_request(obj.rid)
            self._states.pop(obj.rid, None)

    def _apply(self, state: _ReqState, out: ReqOutput) -> None:
        if state.finished:  # the finishing output is the last one the scheduler sends
            return
        state.detok.push(out.new_token_ids)
        m = state.meta
        m.update(
            prompt_tokens=out.prompt_tokens,
            completion_tokens=out.completion_tokens,
            cached_tokens=out.cached_tokens,
            finish_reason=out.finished_reason,
        )
        if out.transfer:
            m["kv_transfer"] = out.transfer
        if state.obj.return_logprob:
            text = state.obj.return_text_in_logprobs
            m.setdefault("output_token_logprobs", []).extend(
                self._lp_triples(out.output_token_logprobs, text)
            )
            m.setdefault("output_top_logprobs", []).extend(
                [self._lp_triples(t, text) if t else None for t in out.output_top_logprobs]
            )
            if out.input_token_logprobs is not None:
                m["input_token_logprobs"] = self._lp_triples(out.input_token_logprobs, text)
                m["input_top_logprobs"] = [
                    self._lp_triples(t, text) if t else None for t in out.input_top_logprobs or []
                ]
        if out.finished_reason is not None:
            state.finished = True
            matched = out.finished_reason.get("matched")
            state.detok.finish(matched if isinstance(matched, str) else None)

    def _lp_triples(self, pairs: list, with_text: bool) -> list:
        if not with_text:
            return [[lp, tok, None] for lp, tok in pairs]
        return [[lp, tok, self.tokenizer.decode([tok])] for lp, tok in pairs]

    def _result(self, state: _ReqState) -> dict[str, Any]:
        meta = {"id": state.obj.rid, **state.meta}
        meta["e2e_latency"] = time.time() - state.created
        return {"text": state.detok.text, "output_ids": list(state.detok.ids), "meta_info": meta}

    def abort_request(self, rid: str) -> None:
        """Abort one request; ``rid=""`` aborts every request (SGLang's abort_all)."""
        if self._loop_task is None or self.scheduler_dead:
            return
        self.dp.send_abort(AbortReq(rid))

    def model_info(self) -> dict[str, Any]:
        return {
            "model_path": self.model_path,
            "tokenizer_path": self.server_args.tokenizer_path,
            "preferred_sampling_params": None,
            "weight_version": "default",
            "served_model_name": self.served_model_name,
            "is_generation": True,
            "context_length": self.context_length,
            "architecture": self.scheduler_info.get("architecture"),
        }
