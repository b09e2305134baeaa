"""After a forward pass: sample, compute logprobs, apply stop conditions, build outputs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

import torch

from sglang.srt.layers.sampler import logprobs_of, mask_tokens, sample
from sglang.srt.managers.io_struct import ReqOutput

if TYPE_CHECKING:
    from sglang.srt.managers.req import Req
    from sglang.srt.managers.schedule_policy import ScheduledBatch


class OutputProcessor:
    def __init__(self, tokenizer: Any, eos_token_ids: set[int]):
        self.tokenizer = tokenizer
        self.eos_token_ids = eos_token_ids

    def process(self, batch: "ScheduledBatch", logits: torch.Tensor) -> list["Req"]:
        """Apply the pass's results to its requests; returns those that got a new token."""
        sample_rows, sampled_reqs, row = [], [], 0
        for req, lp, does_sample in zip(batch.reqs, batch.logprob_rows, batch.samples):
            if lp is not None:
                first, lo, hi = lp
                self._input_logprobs(req, logits[first : first + hi - lo], lo)
                row = first + hi - lo
            if does_sample:
                sample_rows.append(row)
                sampled_reqs.append(req)
                row += 1
        if not sampled_reqs:
            return []
        if len(sample_rows) == logits.shape[0]:
            rows = logits  # every row samples, in order (decode): no gather copy
        else:
            rows = logits[torch.tensor(sample_rows, dtype=torch.int64)]
        if any(len(r.output_ids) < r.sampling_params.min_new_tokens for r in sampled_reqs):
            # SGLang's min_new_tokens penalizer: no EOS / stop token until enough are out (the
            # logprobs then see the masked logits too, as SGLang's do).
            rows = mask_tokens(rows, [self._banned(r) for r in sampled_reqs])
        next_ids = sample(
            rows,
            [r.sampling_params for r in sampled_reqs],
            [len(r.output_ids) for r in sampled_reqs],
        ).tolist()
        want_lp = [i for i, r in enumerate(sampled_reqs) if r.return_logprob]
        if want_lp:
            top_k = max(sampled_reqs[i].top_logprobs_num for i in want_lp)
            lps, tops = logprobs_of(
                rows[want_lp], torch.tensor([next_ids[i] for i in want_lp]), top_k
            )
            for j, i in enumerate(want_lp):
                req = sampled_reqs[i]
                req.pending_logprobs.append((lps[j], next_ids[i]))
                req.pending_top.append(tops[j][: req.top_logprobs_num])
        for req, tok in zip(sampled_reqs, next_ids):
            self.append_token(req, tok)
        return sampled_reqs

    def _banned(self, req: "Req") -> list[int]:
        sp = req.sampling_params
        if len(req.output_ids) >= sp.min_new_tokens:
            return []
        return sorted(self.eos_token_ids.union(sp.stop_token_ids))

    def _input_logprobs(self, req: "Req", rows: torch.Tensor, lo: int) -> None:
        ids = req.origin_input_ids
        if not req.input_token_logprobs and req.logprob_start_len == 0:
            req.input_token_logprobs.append((None, ids[0]))
            req.input_top_logprobs.append(None)
        targets = torch.tensor(ids[lo + 1 : lo + 1 + rows.shape[0]], dtype=torch.int64)
        lps, tops = logprobs_of(rows, targets, req.top_logprobs_num)
        for lp, top, tok in zip(lps, tops, targets.tolist()):
            req.input_token_logprobs.append((lp, tok))
            req.input_top_logprobs.append(top if req.top_logprobs_num else None)

    def append_token(self, req: "Req", tok: int) -> None:
        if req.max_new_tokens <= 0:
            req.finish({"type": "length", "length": 0})
            return
        req.output_ids.append(tok)
        self.check_finished(req)

    def check_finished(self, req: "Req") -> None:
        sp, tok = req.sampling_params, req.output_ids[-1]
        if len(req.output_ids) < sp.min_new_tokens:
            # As SGLang: no EOS, stop token or stop string ends it before min_new_tokens (the
            # sampler masks the stop tokens; the length limit still applies).
            if len(req.output_ids) >= req.max_new_tokens:
                req.finish({"type": "length", "length": req.max_new_tokens})
        elif not sp.ignore_eos and tok in self.eos_token_ids:
            req.finish({"type": "stop", "matched": tok})
        elif tok in sp.stop_token_ids:
            req.finish({"type": "stop", "matched": tok})
        elif sp.stop and (matched := self._stop_string(req)) is not None:
            req.finish({"type": "stop", "matched": matched})
        elif len(req.output_ids) >= req.max_new_tokens:
            req.finish({"type": "length", "length": req.max_new_tokens})

    def _stop_string(self, req: "Req") -> Optional[str]:
        longest = max(len(s) for s in req.sampling_params.stop)
        tail = self.tokenizer.decode(req.output_ids[-(longest + 8) :])
        for s in req.sampling_params.stop:
            if s in tail:
                return s
        return None

    @staticmethod
    def make_output(req: "Req") -> ReqOutput:
        new_ids = req.output_ids[req.sent_len :]
        req.sent_len = len(req.output_ids)
        out = ReqOutput(
            rid=req.rid,
            new_token_ids=new_ids,
            finished_reason=req.finished_reason,
            prompt_tokens=len(req.origin_input_ids),
            completion_tokens=len(req.output_ids),
            cached_tokens=req.cached_tokens,
            output_token_logprobs=req.pending_logprobs,
            output_top_logprobs=req.pending_top,
            transfer=req.transfer,
        )
        req.pending_logprobs, req.pending_top = [], []
        if req.return_logprob and not req.input_logprobs_sent:
            out.input_token_logprobs = req.input_token_logprobs
            out.input_top_logprobs = req.input_top_logprobs
            req.input_logprobs_sent = True
        return out
