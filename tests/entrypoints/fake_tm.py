"""A tokenizer manager stand-in for unit tests of the OpenAI layer (no engine, no model).

It "generates" a fixed word sequence, honouring max_new_tokens, ignore_eos, stop strings and
logprob requests, with the output dicts TokenizerManager.generate_request yields.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Optional

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from sglang.srt.managers.io_struct import BadRequestError, GenerateReqInput

SPECIAL = ["<unk>", "<eos>", "<|user|>", "<|assistant|>", "<|system|>"]
WORDS = "one two three four five six seven eight nine ten hello world".split()
TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def make_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {t: i for i, t in enumerate(SPECIAL + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece()
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<eos>",
        unk_token="<unk>",
        additional_special_tokens=SPECIAL[2:],
    )
    hf.chat_template = TEMPLATE
    return hf


class FakeTM:
    served_model_name = "tiny"
    model_path = "/models/tiny"
    context_length = 64

    def __init__(self, abort: Optional[dict[str, Any]] = None) -> None:
        self.tokenizer = make_tokenizer()
        self.received: list[GenerateReqInput] = []
        self.aborted: list[str] = []
        self.abort = abort  # finish every request with this abort finish_reason

    def abort_request(self, rid: str) -> None:
        self.aborted.append(rid)

    async def generate_request(self, obj: GenerateReqInput, request: Any) -> AsyncIterator[dict]:
        self.received.append(obj)
        ids = obj.input_ids or self.tokenizer.encode(obj.text)
        sp = obj.parsed_sampling_params
        if len(ids) + sp.max_new_tokens > self.context_length:
            raise BadRequestError(
                f"prompt of {len(ids)} tokens + max_new_tokens {sp.max_new_tokens} exceeds the "
                f"context length {self.context_length}"
            )
        eos, first = SPECIAL.index("<eos>"), len(SPECIAL)
        script = list(range(first, first + len(WORDS)))
        script = script if sp.ignore_eos else script[:6] + [eos]
        out_ids: list[int] = []
        finish: Optional[dict[str, Any]] = None
        text = ""
        for step in range(sp.max_new_tokens):
            tid = script[step % len(script)]
            out_ids.append(tid)
            text = self.tokenizer.decode(out_ids, skip_special_tokens=True)
            hit = next((s for s in sp.stop if s in text), None)
            if tid == eos and not sp.ignore_eos:
                finish = {"type": "stop", "matched": eos}
            elif hit is not None:
                text, finish = text[: text.index(hit)], {"type": "stop", "matched": hit}
            elif step + 1 == sp.max_new_tokens:
                finish = {"type": "length", "length": sp.max_new_tokens}
            if self.abort is not None:
                finish = dict(self.abort)
            if obj.stream or finish is not None:
                yield self._output(obj, ids, out_ids, text, finish)
            if finish is not None:
                return
        yield self._output(obj, ids, out_ids, text, {"type": "length", "length": 0})

    def _output(
        self, obj: GenerateReqInput, ids: list[int], out_ids: list[int], text: str, finish: Any
    ) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "id": obj.rid,
            "prompt_tokens": len(ids),
            "completion_tokens": len(out_ids),
            "cached_tokens": 0,
            "finish_reason": finish,
            "e2e_latency": 0.01,
        }
        if obj.return_logprob:
            dec = self.tokenizer.decode
            meta["output_token_logprobs"] = [(-0.5, t, dec([t])) for t in out_ids]
            meta["output_top_logprobs"] = [
                [(-0.5, t, dec([t])), (-1.5, 5, None), (-2.5, 6, "two")][: obj.top_logprobs_num]
                for t in out_ids
            ]
            meta["input_token_logprobs"] = [(None, t, None) for t in ids]
            meta["input_top_logprobs"] = [None for _ in ids]
        return {"text": text, "output_ids": list(out_ids), "meta_info": meta}
