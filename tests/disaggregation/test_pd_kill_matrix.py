"""kill -9 of a prefill or a decode server (its whole process group: HTTP process and scheduler)
at every stage of a request, on Mooncake and NIXL, then a restart on the same ports.

One prefill + one decode per backend, driven directly with bootstrap fields (as mini_lb sends a
request). For each killed side, four requests are held at once, one per stage (bootstrapping,
pages pre-allocated on the decode, KV write in flight, decode streaming; see
sglang/test/fault_matrix.py for how each is held), then the side is killed. Each cell asserts
the error the client of the survivor saw (status, message) and that it came within 3x the
configured heartbeat/timeouts, the survivor's /health, its pools whole, and that after the
restart a new request through the same survivor answers what the unified server answers.
"""

from __future__ import annotations

import pytest
import requests

from pool_checks import assert_pool_whole
from sglang.test import fault_matrix as fm

# (killed side, stage) -> (status the survivor's client gets, words its message holds)
EXPECT = {
    ("prefill", "bootstrapping"): (500, "Lost connection with prefill instance"),
    ("prefill", "prealloc"): (500, "Lost connection with prefill instance"),
    ("prefill", "transfer"): (500, "Lost connection with prefill instance"),
    ("prefill", "decoding"): (200, ""),  # the decode finishes its stream on its own
    ("decode", "bootstrapping"): (500, "timed out after 8.0s in KVPoll.Bootstrapping"),
    ("decode", "prealloc"): (500, "Prefill transfer failed"),
    ("decode", "transfer"): (500, "Prefill transfer failed"),
    ("decode", "decoding"): (200, ""),  # the prefill had finished; the client's stream breaks
}
LIMIT = 3 * fm.TIMEOUT  # every error within 3x the largest configured timeout (8 s)


@pytest.fixture(scope="module")
def pairs(tiny_model, log_dir):
    made: dict[str, fm.Pair] = {}

    def get(backend: str) -> fm.Pair:
        if backend not in made:
            made[backend] = fm.Pair(tiny_model, f"{log_dir}/kill-{backend}", backend).launch()
        return made[backend]

    yield get
    for p in made.values():
        p.stop()


@pytest.fixture(scope="module")
def answers(unified):
    return {"short": fm.reference(unified, fm.SHORT), "long": fm.reference(unified, fm.LONG)}


@pytest.mark.parametrize("killed", fm.SIDES)
@pytest.mark.parametrize("backend", ["mooncake", "nixl"])
def test_kill_at_every_stage_then_restart(pairs, answers, backend, killed):
    pair = pairs(backend)
    survivor = "decode" if killed == "prefill" else "prefill"
    cells = fm.hold_and_kill(pair, killed, fm.STAGES, restart_now=True)
    for cell in cells:
        where = f"{backend}: kill -9 {killed} at {cell.stage}: {cell.row()}"
        status, words = EXPECT[killed, cell.stage]
        assert cell.survivor.status == status, where
        assert words in cell.survivor.message, where
        assert cell.seconds is None or cell.seconds < LIMIT, where
        if cell.stage == "decoding" and killed == "prefill":  # the stream ran to its end
            assert cell.survivor.text == answers["long"], where
            assert cell.seconds is None, where
        if cell.stage == "decoding" and killed == "decode":  # its client's stream broke
            assert cell.victim.error and cell.victim.chunks >= 1, where
        if cell.stage == "transfer" or (cell.stage, killed) == ("bootstrapping", "prefill"):
            assert cell.victim.error == "ConnectionError", where
        assert cell.survivor_health == 200, where
        assert cell.leaked == 0, where
    assert_pool_whole(pair.url(survivor))
    fm.restart_and_recover(pair, killed, cells)
    assert cells[0].recovered == answers["short"], cells[0].row()
    assert cells[0].attempts == 1, cells[0].row()  # the first request after the restart works
    assert requests.get(pair.url(killed) + "/health", timeout=10).status_code == 200
    for side in fm.SIDES:
        assert_pool_whole(pair.url(side))
