"""Typed messages between the HTTP (tokenizer) process and the scheduler process.

They travel pickled over ZMQ PUSH/PULL sockets; this file is the whole wire protocol between the
two processes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from sglang.srt.sampling.sampling_params import SamplingParams


# ---- tokenizer manager -> scheduler ---------------------------------------------------------
@dataclass
class TokenizedGenerateReqInput:
    rid: str
    input_ids: list[int]
    sampling_params: SamplingParams
    return_logprob: bool = False
    logprob_start_len: int = -1  # -1: no input logprobs
    top_logprobs_num: int = 0
    stream: bool = False
    bootstrap_host: Optional[str] = None
    bootstrap_port: Optional[int] = None
    bootstrap_room: Optional[int] = None


@dataclass
class AbortReq:
    rid: str  # "" aborts everything


@dataclass
class RpcReq:
    """A control call answered by an RpcOut with the same ``rpc_id``.

    ``method``: "get_info" | "flush_cache".
    """

    rpc_id: int
    method: str
    args: dict[str, Any] = field(default_factory=dict)


# ---- scheduler -> tokenizer manager ---------------------------------------------------------
@dataclass
class ReqOutput:
    """What happened to one request in one scheduler step (increments only)."""

    rid: str
    new_token_ids: list[int]
    finished_reason: Optional[dict[str, Any]]  # None while running
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    # logprob increments: (logprob, token_id) per new token, and top-k lists per new token
    output_token_logprobs: list[tuple[float, int]] = field(default_factory=list)
    output_top_logprobs: list[list[tuple[float, int]]] = field(default_factory=list)
    # sent once, with the first output of a request that asked for them
    input_token_logprobs: Optional[list[tuple[Optional[float], int]]] = None
    input_top_logprobs: Optional[list[Optional[list[tuple[float, int]]]]] = None
    # PD: KV transfer figures of this request, sent once when known
    transfer: Optional[dict[str, Any]] = None


@dataclass
class BatchReqOutput:
    outputs: list[ReqOutput]


@dataclass
class RpcOut:
    rpc_id: int
    result: Any = None
    error: Optional[str] = None


@dataclass
class SchedulerReady:
    """First message of the scheduler: the facts the HTTP process reports."""

    info: dict[str, Any]


# ---- HTTP layer -> tokenizer manager --------------------------------------------------------
class BadRequestError(ValueError):
    """Bad input from a client; the HTTP layer answers 400 with its text."""


def _check_ints(name: str, values: list, lo: int, hi: int) -> None:
    """Each value None or an integer (not a bool) in [lo, hi]; else a 400 saying which."""
    for v in values:
        if v is None:
            continue
        if not isinstance(v, int) or isinstance(v, bool):
            raise BadRequestError(f"'{name}' must be an integer, got {type(v).__name__}")
        if not lo <= v <= hi:
            raise BadRequestError(f"'{name}' must be in [{lo}, {hi}], got {v}")


@dataclass
class GenerateReqInput:
    """SGLang's native /generate body. ``normalize()`` splits a batch into single requests."""

    text: Optional[Any] = None  # str | list[str]
    input_ids: Optional[Any] = None  # list[int] | list[list[int]]
    sampling_params: Optional[Any] = None  # dict | list[dict]
    rid: Optional[Any] = None  # str | list[str]
    return_logprob: Any = False
    logprob_start_len: Any = -1
    top_logprobs_num: Any = 0
    return_text_in_logprobs: bool = False
    stream: bool = False
    bootstrap_host: Optional[Any] = None
    bootstrap_port: Optional[Any] = None
    bootstrap_room: Optional[Any] = None
    # set by normalize()
    parsed_sampling_params: Optional[SamplingParams] = None

    _FIELDS = (
        "text input_ids sampling_params rid return_logprob logprob_start_len top_logprobs_num "
        "return_text_in_logprobs stream bootstrap_host bootstrap_port bootstrap_room"
    ).split()

    @classmethod
    def from_json(cls, body: Any) -> "GenerateReqInput":
        if not isinstance(body, dict):
            raise BadRequestError("request body must be a JSON object")
        # SGLang accepts and ignores many optional fields; keep the known ones.
        known = {k: body[k] for k in cls._FIELDS if k in body}
        return cls(**known)

    @property
    def is_batch(self) -> bool:
        if self.text is not None:
            return isinstance(self.text, list)
        return isinstance(self.input_ids, list) and bool(self.input_ids) and isinstance(
            self.input_ids[0], list
        )

    def normalize(self) -> list["GenerateReqInput"]:
        """Validate and split into single requests (a single request gives a list of one)."""
        import uuid

        if (self.text is None) == (self.input_ids is None):
            raise BadRequestError("exactly one of 'text' and 'input_ids' must be given")
        if self.text is not None:
            items = self.text if isinstance(self.text, list) else [self.text]
            if not items:
                raise BadRequestError("'text' is an empty list")
            for t in items:
                if not isinstance(t, str):
                    raise BadRequestError(f"'text' must be a string or list of strings, got {t!r}")
                if t == "":
                    raise BadRequestError("'text' is empty: the prompt needs at least one token")
        else:
            ids = self.input_ids
            if not isinstance(ids, list) or not ids:
                raise BadRequestError("'input_ids' must be a non-empty list of token ids")
            items = ids if isinstance(ids[0], list) else [ids]
            for seq in items:
                if not isinstance(seq, list) or not seq:
                    raise BadRequestError("'input_ids' has an empty prompt")
                if not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in seq):
                    raise BadRequestError("'input_ids' must hold non-negative integers")
        n = len(items)
        batch = self.is_batch

        def per_item(name: str, value: Any, scalar_types: tuple) -> list:
            if batch and isinstance(value, list):
                if len(value) != n:
                    raise BadRequestError(f"'{name}' has {len(value)} entries for {n} prompts")
                return value
            if value is not None and not isinstance(value, scalar_types):
                raise BadRequestError(f"'{name}' has the wrong type: {type(value).__name__}")
            return [value] * n

        sps = per_item("sampling_params", self.sampling_params, (dict,))
        rids = per_item("rid", self.rid, (str,))
        rets = per_item("return_logprob", self.return_logprob, (bool,))
        starts = per_item("logprob_start_len", self.logprob_start_len, (int,))
        tops = per_item("top_logprobs_num", self.top_logprobs_num, (int,))
        hosts = per_item("bootstrap_host", self.bootstrap_host, (str,))
        ports = per_item("bootstrap_port", self.bootstrap_port, (int,))
        rooms = per_item("bootstrap_room", self.bootstrap_room, (int,))
        # Rooms are 63-bit (SGLang's balancers draw them from [0, 2**63)): anything else would
        # fail deep in the transfer layer's uint64 / msgpack encoding instead of here.
        _check_ints("bootstrap_room", rooms, 0, 2**63 - 1)
        _check_ints("bootstrap_port", ports, 1, 65535)
        if not isinstance(self.stream, bool):
            raise BadRequestError("'stream' must be a boolean")
        out = []
        for i in range(n):
            from sglang.srt.sampling.sampling_params import SamplingParamsError

            try:
                sp = SamplingParams.from_dict(sps[i])
            except (SamplingParamsError, TypeError) as e:
                raise BadRequestError(f"bad sampling_params: {e}") from None
            top = tops[i] or 0
            if not isinstance(top, int) or top < 0:
                raise BadRequestError(f"top_logprobs_num must be >= 0, got {top}")
            out.append(
                GenerateReqInput(
                    text=items[i] if self.text is not None else None,
                    input_ids=items[i] if self.input_ids is not None else None,
                    sampling_params=sps[i],
                    rid=rids[i] or uuid.uuid4().hex,
                    return_logprob=bool(rets[i]),
                    logprob_start_len=-1 if starts[i] is None else starts[i],
                    top_logprobs_num=top,
                    return_text_in_logprobs=self.return_text_in_logprobs,
                    stream=self.stream,
                    bootstrap_host=hosts[i],
                    bootstrap_port=ports[i],
                    bootstrap_room=rooms[i],
                    parsed_sampling_params=sp,
                )
            )
        return out
