"""The kill -9 matrix of a PD pair: hold one request at a stage, kill the whole process group of
the prefill or of the decode, record what the client saw and when, check the survivor, restart
the killed server on the same ports and check that a new request succeeds.

The pair is driven directly with bootstrap fields (as mini_lb does), so no balancer is involved.
Stages are held with the test-only knobs: SGLANG_TEST_DISAGG_TRANSFER_DELAY on the prefill keeps
each KV write in flight, SGLANG_TEST_STEP_DELAY on the decode slows the stream, and sending only
one half of a request holds it at bootstrapping (prefill half) or with its pages pre-allocated
on the decode (decode half).

Used by tests/disaggregation/test_pd_kill_matrix.py and benchmarks/fault_matrix.py.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import requests

from sglang.test.pd_calls import Call, Outcome, leaked_pages, pd_state, wait_for
from sglang.test.server_utils import Proc, free_port, spawn, start, wait_all

# Short heartbeats and timeouts, so every fault ends within seconds (SGLang's names).
ENV = {
    "SGLANG_DISAGGREGATION_HEARTBEAT_INTERVAL": "0.5",
    "SGLANG_DISAGGREGATION_HEARTBEAT_MAX_FAILURE": "2",
    "SGLANG_DISAGGREGATION_BOOTSTRAP_TIMEOUT": "8",
    "SGLANG_DISAGGREGATION_WAITING_TIMEOUT": "8",
    "SGLANG_DISAGGREGATION_TRANSFER_TIMEOUT": "8",
    "SGLANG_DISAGGREGATION_BOOTSTRAP_FETCH_ATTEMPTS": "3",
    "SGLANG_DISAGGREGATION_DEFERRED_DECODE_KV_RELEASE_TIMEOUT": "3",
    "SGLANG_CPU_THREADS": "1",  # two cores shared by every process
}
TIMEOUT = 8.0  # the largest of the timeouts above: each error must come within 3x of it
PREFILL_ENV = {"SGLANG_TEST_DISAGG_TRANSFER_DELAY": "1.5"}  # each KV write stays in flight
DECODE_ENV = {"SGLANG_TEST_STEP_DELAY": "0.05"}  # a 64-token stream lasts over 3 s
ARGS = ["--page-size", "4", "--max-total-tokens", "2048", "--chunked-prefill-size", "64",
        "--context-length", "1024"]
PROMPT = "Once upon a time, in a quiet village by the sea, there lived"
SHORT = {"temperature": 0, "max_new_tokens": 8, "ignore_eos": True}
LONG = {"temperature": 0, "max_new_tokens": 64, "ignore_eos": True}
STAGES = ["bootstrapping", "prealloc", "transfer", "decoding"]
SIDES = ["prefill", "decode"]


def reference(unified_url: str, params: dict) -> str:
    r = requests.post(unified_url + "/generate", json={"text": PROMPT, "sampling_params": params},
                      timeout=120)
    r.raise_for_status()
    return r.json()["text"]


@dataclass
class Pair:
    """One prefill and one decode server, restartable on the same HTTP and bootstrap ports."""
    model: str
    log_dir: str
    backend: str
    procs: dict[str, Proc] = field(default_factory=dict)
    argv: dict[str, list[str]] = field(default_factory=dict)
    env: dict[str, dict] = field(default_factory=dict)
    bport: int = 0
    restarts: int = 0
    restarting: Optional[threading.Thread] = None

    def launch(self) -> "Pair":
        self.bport = free_port()
        for side, extra, env in (("prefill", ["--disaggregation-bootstrap-port", str(self.bport)],
                                  PREFILL_ENV), ("decode", [], DECODE_ENV)):
            port = free_port()
            self.argv[side] = ["-m", "sglang.launch_server", "--model-path", self.model,
                               "--host", "127.0.0.1", "--port", str(port),
                               "--disaggregation-mode", side,
                               "--disaggregation-transfer-backend", self.backend,
                               *extra, *ARGS]
            self.env[side] = {**ENV, **env}
            self.procs[side] = spawn(f"{self.backend}-{side}", self.argv[side],
                                     f"http://127.0.0.1:{port}", self.log_dir, self.env[side])
        wait_all(list(self.procs.values()))  # both start at once
        return self

    def url(self, side: str) -> str:
        return self.procs[side].url

    def restart(self, side: str) -> None:
        self.restarts += 1
        old = self.procs[side]
        assert not old.alive(), f"{side} is still running"
        self.procs[side] = start(f"{old.name.split('~')[0]}~{self.restarts}", self.argv[side],
                                 old.url, self.log_dir, self.env[side])

    def stop(self) -> None:
        for p in self.procs.values():  # both shut down at once
            p.terminate()
        for p in self.procs.values():
            p.stop()

    def body(self, params: dict, room: int) -> dict:
        return {"text": PROMPT, "sampling_params": params, "bootstrap_host": "127.0.0.1",
                "bootstrap_port": self.bport, "bootstrap_room": room}

    def generate(self, params: dict) -> tuple[Outcome, Outcome]:
        """One request through the pair, both halves at once (as mini_lb sends it)."""
        body = self.body(params, random.randrange(1, 2**63))
        p, d = Call(self.url("prefill"), body), Call(self.url("decode"), body)
        return p.result(), d.result()


@dataclass
class Cell:
    backend: str
    killed: str
    stage: str
    survivor: Outcome  # what the client of the surviving server saw
    victim: Outcome  # what the client of the killed server saw
    seconds: Optional[float]  # from the kill to the error a client saw (None: none saw one)
    leaked: int = 0
    survivor_health: int = 0
    recovered: str = ""  # the decode's text of a request after the restart
    attempts: int = 0  # requests sent after the restart until one succeeded

    def row(self) -> dict:
        return {"backend": self.backend, "killed": self.killed, "stage": self.stage,
                "survivor_saw": self.survivor.brief(), "victim_client_saw": self.victim.brief(),
                "seconds_to_error": self.seconds, "pages_leaked": self.leaked,
                "survivor_health": self.survivor_health, "attempts_after_restart": self.attempts}


@dataclass
class Held:
    """One request held at ``stage``: its calls so far and the half sent only after the kill."""
    stage: str
    room: int
    calls: dict[str, Call]
    late: Optional[str] = None


def hold(pair: Pair, killed: str, stage: str) -> Held:
    room = random.randrange(1, 2**63)
    url = pair.url

    def queue(side: str, name: str, n: int) -> Callable[[], bool]:
        return lambda: pd_state(url(side))["disaggregation"][name] >= n

    if stage == "bootstrapping":  # the prefill waits for a decode that has not handshaken
        n = pd_state(url("prefill"))["disaggregation"]["bootstrap_queue"] + 1
        h = Held(stage, room, {"prefill": Call(url("prefill"), pair.body(SHORT, room))},
                 "decode" if killed == "prefill" else None)
        wait_for("prefill bootstrap queue", queue("prefill", "bootstrap_queue", n))
    elif stage == "prealloc":  # the decode's pages are allocated and sent, the prefill has none
        n = pd_state(url("decode"))["disaggregation"]["transfer_queue"] + 1
        h = Held(stage, room, {"decode": Call(url("decode"), pair.body(SHORT, room))},
                 "prefill" if killed == "decode" else None)
        wait_for("decode transfer queue", queue("decode", "transfer_queue", n))
    elif stage == "transfer":  # the prefill's KV write is in flight
        h = Held(stage, room, {s: Call(url(s), pair.body(SHORT, room)) for s in SIDES})
        wait_for("prefill inflight queue", queue("prefill", "inflight_queue", 1))
    else:  # decoding: the decode is streaming its answer
        h = Held(stage, room, {"prefill": Call(url("prefill"), pair.body(LONG, room)),
                               "decode": Call(url("decode"), pair.body(LONG, room), stream=True)})
        assert h.calls["decode"].first_chunk.wait(60), "the stream never started"
    return h


def hold_and_kill(pair: Pair, killed: str, stages: list[str],
                  restart_now: bool = False) -> list[Cell]:  # fmt: skip
    """Hold one request at each of ``stages`` (all at once), kill -9 ``killed``'s process group;
    one Cell per stage with the survivor's answer and the time from the kill to the error.
    ``restart_now``: start the killed server again at once, while the survivor's answers are
    still coming (``restart_and_recover`` then waits for it)."""
    survivor = "decode" if killed == "prefill" else "prefill"
    # the stream first (it outlasts the others' set-up), the in-flight write last (it is brief)
    order = sorted(stages, key=["decoding", "prealloc", "bootstrapping", "transfer"].index)
    held = [hold(pair, killed, stage) for stage in order]
    for h in held:
        if h.stage == "decoding":
            assert h.calls["decode"].out.at == 0, "the stream ended before the kill"
    pair.procs[killed].kill()
    t_kill = time.time()
    if restart_now:
        pair.restarting = threading.Thread(target=pair.restart, args=(killed,), daemon=True)
        pair.restarting.start()
    for h in held:
        if h.late is not None:
            h.calls[h.late] = Call(pair.url(h.late), pair.body(SHORT, h.room))
    cells = []
    for h in sorted(held, key=lambda h: STAGES.index(h.stage)):
        surv = h.calls[survivor].result() if survivor in h.calls else Outcome()
        victim = h.calls[killed].result() if killed in h.calls else Outcome(error="(none sent)")
        failed = surv if surv.status != 200 else victim  # what showed the fault
        seconds = round(max(0.0, failed.at - t_kill), 2) if failed.error or failed.status != 200 \
            else None  # no client saw an error
        cells.append(Cell(pair.backend, killed, h.stage, surv, victim, seconds))
    health = requests.get(pair.url(survivor) + "/health", timeout=10).status_code
    leaked = leaked_pages(pair.url(survivor))
    for c in cells:
        c.survivor_health, c.leaked = health, leaked
    return cells


def restart_and_recover(pair: Pair, killed: str, cells: list[Cell]) -> None:
    """Restart the killed server on its ports; then requests through the pair until one
    succeeds (the decode notices a restarted prefill by its heartbeat)."""
    if pair.restarting is not None:
        pair.restarting.join(300)
        pair.restarting = None
        assert pair.procs[killed].alive(), f"{killed} did not restart"
    else:
        pair.restart(killed)
    deadline = time.time() + 30
    attempts = 0
    while True:
        attempts += 1
        p, d = pair.generate(SHORT)
        if (p.status, d.status) == (200, 200) or time.time() > deadline:
            break
        time.sleep(0.5)
    for c in cells:
        c.attempts = attempts
        c.recovered = d.text if d.status == 200 else f"failed: {p.brief()} / {d.brief()}"


def run_cells(pair: Pair, killed: str, stages: list[str]) -> list[Cell]:
    cells = hold_and_kill(pair, killed, stages)
    restart_and_recover(pair, killed, cells)
    return cells
