"""A prefill and a decode scheduler in one process, joined by ``MemLink``, on ``StubRunner``.

``PDSim.apply(event)`` runs one event (arrival, a step of either scheduler, a link event, an
abort on either side); ``drain()`` lets everything finish; ``check_*`` assert the invariants:
every request ended exactly once on each side, finished answers equal what a unified server
computes, no queued write targets a free decode page, and pools, rows, metadata slots and rooms
are all back.
"""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace
from typing import Any

from sglang.srt.disaggregation.layer import make_pd_layer
from sglang.srt.managers.io_struct import AbortReq, TokenizedGenerateReqInput
from sglang.srt.managers.scheduler import Scheduler
from sglang.srt.sampling.sampling_params import SamplingParams
from sglang.srt.server_args import ServerArgs
from sglang.test.mem_link import MemLink
from sglang.test.stub_runner import StubRunner

PAGE = 4
BASES = [[(7 * i + 3 * b) % 50 + 1 for i in range(48)] for b in range(3)]


def unified_answer(prompt: list[int], max_new: int, runner: StubRunner) -> list[int]:
    """What a unified server on the stub answers (greedy, stops at EOS or max_new)."""
    seq, out = list(prompt), []
    eos, vocab = runner.config.eos_token_ids, runner.config.vocab_size
    while len(out) < max_new:
        pos = len(seq) - 1
        tok = runner.next_token(seq[pos], pos, seq[pos - 1] if pos > 0 else 0, vocab)
        out.append(tok)
        seq.append(tok)
        if tok in eos:
            break
    return out


def _scheduler(mode: str, link: MemLink, total_tokens: int) -> Scheduler:
    args = ServerArgs(
        model_path="stub", device="cpu", page_size=PAGE, chunked_prefill_size=8,
        max_prefill_tokens=16, max_total_tokens=total_tokens, max_running_requests=3,
        skip_server_warmup=True, disaggregation_mode=mode, num_reserved_decode_tokens=4,
    )
    no_text = SimpleNamespace(decode=lambda ids: "")  # no stop strings in these tests
    return Scheduler(args, runner=StubRunner(), tokenizer=no_text,
                     make_disagg=lambda ctx: make_pd_layer(ctx, link.connect_fn))


class PDSim:
    def __init__(self, prefill_tokens: int = 160, decode_tokens: int = 72):
        self.link = MemLink()
        self.p = _scheduler("prefill", link=self.link, total_tokens=prefill_tokens)
        self.d = _scheduler("decode", link=self.link, total_tokens=decode_tokens)
        self.reqs: dict[str, dict[str, Any]] = {}
        self.outs: dict[str, dict[str, list]] = {"p": defaultdict(list), "d": defaultdict(list)}

    # ---- events -------------------------------------------------------------------------
    def arrive(self, base: int, length: int, extra: int, max_new: int, stream: bool,
               logprob: bool) -> None:
        n = len(self.reqs)
        rid, room = f"r{n}", 1000 + n
        prompt = BASES[base][:length] + [(extra + j) % 50 + 1 for j in range(extra % 3)]
        self.reqs[rid] = {"prompt": prompt, "max_new": max_new, "room": room}
        for sched in (self.p, self.d):
            sp = SamplingParams(max_new_tokens=max_new, temperature=0.0)
            sched.handle(TokenizedGenerateReqInput(
                rid, list(prompt), sp, stream=stream, return_logprob=logprob,
                bootstrap_host="127.0.0.1", bootstrap_port=8998, bootstrap_room=room,
            ))
        self._collect()

    def _room(self, i: int) -> int:
        rooms = sorted(self.link.rooms) or [0]
        return rooms[i % len(rooms)]

    def _rid(self, i: int) -> str:
        return f"r{i % max(1, len(self.reqs))}"

    def apply(self, kind: str, i: int) -> None:
        link = self.link
        if kind == "step_p":
            self.p.step()
        elif kind == "step_d":
            self.d.step()
        elif kind in ("connect", "deliver", "fail", "flush", "timeout"):
            getattr(link, kind)(self._room(i))
        elif kind == "advance":  # handshakes done, both sides move on; nothing lands yet
            for room in list(link.rooms):
                link.connect(room)
            self.d.step()
            self.p.step()
            self.p.step()
        elif kind == "lose_peer":
            link.lose_peer()
        elif kind == "abort_p":
            self.p.handle(AbortReq(self._rid(i)))
        elif kind == "abort_d":
            self.d.handle(AbortReq(self._rid(i)))
        elif kind == "abort_all":
            (self.p if i % 2 else self.d).handle(AbortReq(""))
        else:
            raise ValueError(kind)
        self._collect()
        self.check_no_write_into_free_pages()

    def _collect(self) -> None:
        for side, sched in (("p", self.p), ("d", self.d)):
            for out in sched.outbox:
                self.outs[side][out.rid].append(out)
            sched.outbox.clear()

    def drain(self, rounds: int = 400) -> None:
        for _ in range(rounds):
            for room in list(self.link.rooms):
                self.link.connect(room)
                self.link.deliver(room)
                self.link.flush(room)
            self.p.step()
            self.d.step()
            self._collect()
            self.check_no_write_into_free_pages()
            if not (self.p.busy() or self.d.busy() or self.d.disagg.held):
                return
        raise AssertionError(
            f"not drained after {rounds} rounds: prefill {self.p.info()}, decode {self.d.info()}"
        )

    # ---- invariants ---------------------------------------------------------------------
    def check_no_write_into_free_pages(self) -> None:
        free = self.d.cache.allocator._is_free
        bad = [p for p in self.link.pending_dst_pages() if free[p]]
        assert not bad, f"a queued KV write targets decode pages already free: {bad}"

    def check_ended_once(self) -> None:
        for side in ("p", "d"):
            for rid in self.reqs:
                outs = self.outs[side][rid]
                finals = [o for o in outs if o.finished_reason is not None]
                assert len(finals) == 1, f"{side} {rid}: {len(finals)} final outputs"
                assert outs[-1] is finals[0], f"{side} {rid}: output after the final one"

    def check_answers(self) -> None:
        runner = self.d.runner
        for rid, r in self.reqs.items():
            outs = self.outs["d"][rid]
            reason = outs[-1].finished_reason
            tokens = [t for o in outs for t in o.new_token_ids]
            want = unified_answer(r["prompt"], r["max_new"], runner)
            if reason["type"] != "abort":
                assert tokens == want, f"{rid}: decode answered {tokens}, unified {want}"
            p_final = self.outs["p"][rid][-1].finished_reason
            if p_final["type"] != "abort":
                first = [t for o in self.outs["p"][rid] for t in o.new_token_ids]
                assert first == want[:1], f"{rid}: prefill's first token {first}, want {want[:1]}"

    def check_whole(self) -> None:
        for name, s in (("prefill", self.p), ("decode", self.d)):
            c = s.cache
            cached = c.tree.cached_pages if c.tree else 0
            assert c.allocator.free_pages + cached == c.num_pages, f"{name}: pages leaked"
            assert not c.tree or c.tree.protected_pages == 0, f"{name}: prefix pages locked"
            assert c.req_to_token.free_rows == c.req_to_token.rows, f"{name}: table rows leaked"
            q = s.disagg
            assert q.slots.available() == q.num_slots, f"{name}: metadata slots leaked"
            assert not (s.waiting or s.running or q.busy()), f"{name}: requests left"
        assert not self.d.disagg.held, "decode: held pages never released"
        assert not self.link.open_rooms(), f"rooms left open: {self.link.open_rooms()}"
