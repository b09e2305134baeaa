"""Sampling parameters of one request, with SGLang's field names and validation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Union

_FIELDS = {
    "max_new_tokens",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "stop",
    "stop_token_ids",
    "ignore_eos",
    "seed",
    "sampling_seed",
    "skip_special_tokens",
    "spaces_between_special_tokens",
    "no_stop_trim",
    "min_new_tokens",
    "frequency_penalty",
    "presence_penalty",
    "repetition_penalty",
    "n",
}


class SamplingParamsError(ValueError):
    """Raised for a sampling value out of range; the HTTP layer answers 400 with its text."""


@dataclass
class SamplingParams:
    max_new_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    seed: Optional[int] = None
    skip_special_tokens: bool = True
    no_stop_trim: bool = False
    min_new_tokens: int = 0

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1

    @classmethod
    def from_dict(cls, d: Optional[dict[str, Any]]) -> "SamplingParams":
        d = dict(d or {})
        unknown = set(d) - _FIELDS
        if unknown:
            raise SamplingParamsError(f"unknown sampling parameter(s): {sorted(unknown)}")
        if "sampling_seed" in d and d.get("seed") is None:
            d["seed"] = d.pop("sampling_seed")
        d.pop("sampling_seed", None)
        for unsupported in ("frequency_penalty", "presence_penalty", "repetition_penalty"):
            v = d.pop(unsupported, None)
            neutral = 1.0 if unsupported == "repetition_penalty" else 0.0
            if v is not None and float(v) != neutral:
                raise SamplingParamsError(f"{unsupported} is not supported yet")
        d.pop("spaces_between_special_tokens", None)
        n = d.pop("n", 1)
        if n not in (None, 1):
            raise SamplingParamsError("n > 1 is not supported; send a batch instead")
        stop = d.get("stop")
        if stop is None:
            d["stop"] = []
        elif isinstance(stop, str):
            d["stop"] = [stop]
        if d.get("stop_token_ids") is None:
            d["stop_token_ids"] = []
        if d.get("max_new_tokens") is None:
            d.pop("max_new_tokens", None)
        p = cls(**d)
        p.check()
        return p

    def check(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise SamplingParamsError(msg)

        def num(name: str, integer: bool = False) -> None:
            v = getattr(self, name)
            ok = isinstance(v, int) if integer else isinstance(v, (int, float))
            need(ok and not isinstance(v, bool), f"{name} must be a number, got {v!r}")

        for name in ("temperature", "top_p", "min_p"):
            num(name)
        for name in ("max_new_tokens", "top_k", "min_new_tokens"):
            num(name, integer=True)
        need(self.temperature >= 0.0, f"temperature must be >= 0, got {self.temperature}")
        need(0.0 < self.top_p <= 1.0, f"top_p must be in (0, 1], got {self.top_p}")
        need(0.0 <= self.min_p <= 1.0, f"min_p must be in [0, 1], got {self.min_p}")
        need(
            self.top_k == -1 or self.top_k >= 1,
            f"top_k must be -1 (disabled) or >= 1, got {self.top_k}",
        )
        need(self.max_new_tokens >= 0, f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        need(
            0 <= self.min_new_tokens <= self.max_new_tokens,
            f"min_new_tokens must be in [0, max_new_tokens({self.max_new_tokens})], "
            f"got {self.min_new_tokens}",
        )
        need(
            isinstance(self.stop, list) and all(isinstance(s, str) and s for s in self.stop),
            "stop must be a non-empty string or a list of non-empty strings",
        )
        need(
            isinstance(self.stop_token_ids, list)
            and all(isinstance(t, int) and t >= 0 for t in self.stop_token_ids),
            "stop_token_ids must be a list of non-negative integers",
        )
        need(
            self.seed is None or (isinstance(self.seed, int) and not isinstance(self.seed, bool)),
            f"seed must be an integer, got {self.seed!r}",
        )


StopT = Union[str, list[str], None]
