"""What the HTTP process checks in a generate request before the scheduler sees it.

``GenerateReqInput.normalize`` (io_struct.py) has already checked the fields' types and parsed
the sampling params; here the prompt is tokenized (once) and checked against the model and the
server: not empty, shorter than the context length, within the KV pool, token ids inside the
vocabulary, ``logprob_start_len`` inside the prompt, and on a PD server the bootstrap fields
present. A failure is a BadRequestError (HTTP 400), raised before a streamed response starts.
"""

from __future__ import annotations

from typing import Any, Optional

from sglang.srt.managers.io_struct import (
    BadRequestError,
    GenerateReqInput,
    TokenizedGenerateReqInput,
)
from sglang.srt.server_args import ServerArgs


class RequestValidator:
    def __init__(self, args: ServerArgs, scheduler_info: dict[str, Any], tokenizer: Any):
        self.server_args = args
        self.tokenizer = tokenizer
        self.context_length: int = scheduler_info["context_length"]
        self.max_total_num_tokens: int = scheduler_info["max_total_num_tokens"]
        self.vocab_size: int = scheduler_info["vocab_size"]

    def validate(self, obj: GenerateReqInput) -> TokenizedGenerateReqInput:
        """Check and tokenize now, so a bad request is a 400 before a streamed response starts.

        Pass the result to ``TokenizerManager.generate_request`` so the prompt is tokenized only
        once.
        """
        self._check_pd_fields(obj)
        sp = obj.parsed_sampling_params
        assert sp is not None
        return TokenizedGenerateReqInput(
            rid=obj.rid,
            input_ids=self.tokenize(obj),
            sampling_params=sp,
            return_logprob=obj.return_logprob,
            logprob_start_len=obj.logprob_start_len,
            top_logprobs_num=obj.top_logprobs_num,
            stream=obj.stream,
            bootstrap_host=obj.bootstrap_host,
            bootstrap_port=self._bootstrap_port(obj),
            bootstrap_room=obj.bootstrap_room,
        )

    def tokenize(self, obj: GenerateReqInput) -> list[int]:
        ids = obj.input_ids if obj.input_ids is not None else self.tokenizer.encode(obj.text)
        n = len(ids)
        if n == 0:
            raise BadRequestError("the prompt is empty after tokenization")
        if n >= self.context_length:
            raise BadRequestError(
                f"The input ({n} tokens) is longer than the model's context length "
                f"({self.context_length} tokens)."
            )
        if n > self.max_total_num_tokens:
            raise BadRequestError(
                f"The input ({n} tokens) does not fit in the KV pool "
                f"({self.max_total_num_tokens} tokens); raise --max-total-tokens"
            )
        vocab = self.vocab_size
        if max(ids) >= vocab:
            raise BadRequestError(f"input_ids holds token id {max(ids)} >= vocab size {vocab}")
        if obj.return_logprob and obj.logprob_start_len >= n:
            raise BadRequestError(
                f"logprob_start_len ({obj.logprob_start_len}) must be less than the prompt "
                f"length ({n})"
            )
        return ids

    def _bootstrap_port(self, obj: GenerateReqInput) -> Optional[int]:
        """As SGLang: a decode request without bootstrap_port uses this server's own
        --disaggregation-bootstrap-port."""
        if obj.bootstrap_port is None and self.server_args.disaggregation_mode == "decode":
            return self.server_args.disaggregation_bootstrap_port
        return obj.bootstrap_port

    def _check_pd_fields(self, obj: GenerateReqInput) -> None:
        mode = self.server_args.disaggregation_mode
        if mode == "null":
            return
        if obj.bootstrap_room is None or obj.bootstrap_host is None:
            raise BadRequestError(
                f"this is a {mode} server of a disaggregated deployment: requests need "
                "bootstrap_host, bootstrap_port and bootstrap_room; send them through the load "
                "balancer (python -m sglang.srt.disaggregation.mini_lb)"
            )
