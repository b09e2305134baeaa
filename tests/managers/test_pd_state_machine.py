"""Property-based tests of the PD state machines, in one process (no servers, no sockets).

Hypothesis drives random interleavings of arrivals (chunked prompts, shared prefixes), steps of
either scheduler, handshakes, partial and late transfer completions, transfer failures, decode
timeouts, peer loss, aborts of one request or all on either side, and decode retractions (the
decode pool is small). After each sequence: every request ended exactly once on both sides,
finished answers equal a unified server's, no queued write ever targeted a free decode page,
and pages, rows, metadata slots and rooms are all back. A deliberately injected leak must make
the same check fail.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from pd_sim import PDSim
from sglang.srt.disaggregation.decode import DecodeQueues
from sglang.srt.disaggregation.prefill import PrefillQueues

KINDS = (["step_p"] * 4 + ["step_d"] * 4 + ["connect"] * 2 + ["deliver"] * 3 + ["advance"] * 3
         + ["fail", "flush", "timeout", "abort_p", "abort_d", "abort_all", "lose_peer"])

arrival = st.tuples(st.just("arrive"), st.integers(0, 2), st.integers(1, 40),
                    st.integers(0, 9), st.integers(1, 16), st.booleans(), st.booleans())
event = st.tuples(st.sampled_from(KINDS), st.integers(0, 7))
sequence = st.lists(st.one_of(arrival, arrival, event, event, event), min_size=1, max_size=40)


def run_sequence(events) -> PDSim:
    sim = PDSim()
    for ev in events:
        if ev[0] == "arrive":
            sim.arrive(*ev[1:])
        else:
            sim.apply(*ev)
    sim.drain()
    sim.check_ended_once()
    sim.check_answers()
    sim.check_whole()
    return sim


# CI runs the same 500 pseudo-random sequences every time (no flake from a new draw); explore
# further with e.g. PD_SIM_EXAMPLES=5000 PD_SIM_RANDOM=1 (4000 fresh sequences passed on
# 2026-12-03).
EXAMPLES = int(os.environ.get("PD_SIM_EXAMPLES", "500"))
DERANDOMIZE = not os.environ.get("PD_SIM_RANDOM")


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck),
          derandomize=DERANDOMIZE, database=None)
@given(sequence)
def test_every_request_ends_once_and_nothing_leaks(events):
    run_sequence(events)


def test_a_plain_request_is_answered_as_unified():
    sim = run_sequence([("arrive", 0, 30, 1, 6, True, True)])
    assert sim.outs["d"]["r0"][-1].finished_reason["type"] in ("length", "stop")


def _forget_held_slots(orig):
    def leaky(self):
        for h in self.held:
            h.slot = None  # the leak: a held request's metadata slot never comes back
        return orig(self)
    return leaky


LEAKS = {
    # the prefill forgets a request aborted in its bootstrap queue: it never ends
    "prefill_abort_drops_bootstrap": (PrefillQueues, "abort",
                                      lambda orig: lambda self, rid: [orig(self, rid), []][1]),
    # the decode frees the held pages of a given-up request but not its metadata slot
    "decode_held_slot_not_freed": (DecodeQueues, "_release_held", _forget_held_slots),
    # the decode reuses the pages of a given-up request at once (no deferred release)
    "decode_no_deferred_release": (DecodeQueues, "_hold", lambda orig: lambda self, req: None),
}


@pytest.mark.parametrize("leak", sorted(LEAKS))
def test_an_injected_leak_is_caught(leak, monkeypatch):
    cls, name, wrap = LEAKS[leak]
    monkeypatch.setattr(cls, name, wrap(getattr(cls, name)))

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck),
              database=None, phases=[Phase.generate], derandomize=DERANDOMIZE)  # first failure ends it
    @given(sequence)
    def prop(events):
        run_sequence(events)

    with pytest.raises(AssertionError):
        prop()
