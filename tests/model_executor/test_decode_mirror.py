"""The CPU decode K/V mirror (DecodeKVMirror) under batch churn, against HF (float32, 1e-4):
requests leaving from the middle, joining after an EXTEND, reordered rows, and a request whose
KV appears in the pool without an EXTEND (as a PD transfer writes it) in recycled slots."""

from __future__ import annotations

import pytest
import torch
from me_helpers import PagedDriver, build_hf_model, hf_logits, max_diff, rand_tokens, save_and_load

TOL = 1e-4


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    model = build_hf_model("llama")
    return model, save_and_load(model, tmp_path_factory.mktemp("llama"))


class Tracker:
    """Teacher-forced decoding of several requests, each row checked against HF."""

    def __init__(self, hf, driver: PagedDriver):
        self.hf, self.d = hf, driver
        self.prompt: dict[str, list[int]] = {}
        self.forced: dict[str, list[int]] = {}
        self.done: dict[str, int] = {}

    def add(self, rids: list[str], lens: list[int]) -> None:
        for rid, n in zip(rids, lens):
            self.prompt[rid] = rand_tokens(n, seed=hash(rid) % 1000)
            self.forced[rid] = rand_tokens(12, seed=hash(rid) % 1000 + 1)
            self.done[rid] = 0
        self.d.extend([(r, self.prompt[r]) for r in rids])

    def step(self, rids: list[str]) -> None:
        toks = [self.forced[r][self.done[r]] for r in rids]
        out = self.d.decode(list(zip(rids, toks)))
        for row, r in enumerate(rids):
            seq = self.prompt[r] + self.forced[r][: self.done[r] + 1]
            assert max_diff(out[row], hf_logits(self.hf, seq)[-1]) <= TOL, (r, self.done[r])
            self.done[r] += 1


@pytest.mark.parametrize("page_size", [1, 16])
def test_mirror_under_batch_churn(llama, page_size):
    hf, runner = llama
    t = Tracker(hf, PagedDriver(runner, page_size))
    mirror = runner.attn_backend.mirror
    assert mirror is not None
    t.add(["a", "b", "c"], [5, 19, 11])
    t.step(["a", "b", "c"])  # first decode: every row gathered
    assert t.d.last_fb.attn_cache["decode"].use_mirror and mirror._bad.numel() == 3
    t.step(["a", "b", "c"])  # steady: nothing re-gathered
    assert mirror._bad is None
    t.step(["a", "c"])  # "b" leaves from the middle: "c" moves up a row
    assert mirror._bad.tolist() == [1]
    t.add(["d"], [40])  # an EXTEND drops the mirror
    t.step(["a", "c", "d"])
    assert mirror._bad.numel() == 3
    t.step(["d", "a", "c"])  # reordered rows
    t.step(["d", "a", "c"])
    assert mirror._bad is None
    for _ in range(3):
        t.step(["d", "a", "c"])


def test_mirror_detects_recycled_slots(llama):
    """Row 0 is "a" (9 tokens); then "a" ends and "z" takes row 0 with a's 9 slots (its KV
    written straight into the pool, as a transfer engine would) plus a new one: the slot lists
    line up, so only the content guard can tell that row 0 must be re-gathered."""
    hf, runner = llama
    d = PagedDriver(runner, 1)
    a, z, nxt = rand_tokens(9, seed=1), rand_tokens(9, seed=2), rand_tokens(1, seed=3)
    d.extend([("a", a[:8])])
    # z's KV, computed beforehand into the 9 slots that "a" is going to occupy.
    slots = d.slots["a"] + [d.free[-1]]
    other = PagedDriver(runner, 1)
    other.pool, other.free = d.pool, list(reversed(slots))
    runner.set_kv_pool(d.pool)
    saved = d.pool.buffer.clone()
    other.extend([("z", z)])
    z_kv = d.pool.buffer.clone()
    d.pool.buffer.copy_(saved)
    d.decode([("a", a[8])])  # the mirror now holds row 0 = "a", 9 tokens
    assert d.slots["a"] == slots
    d.pool.buffer.copy_(z_kv)  # z's KV lands without an EXTEND pass
    d.slots["z"] = list(slots)
    out = d.decode([("z", nxt[0])])
    mirror = runner.attn_backend.mirror
    assert mirror._bad is not None and mirror._bad.tolist() == [0]
    assert max_diff(out[0], hf_logits(hf, z + nxt)[-1]) <= TOL


def test_mirror_matches_plain_gather(llama):
    hf, runner = llama
    outs = []
    for use_mirror in (True, False):
        d = PagedDriver(runner, 16, seed=5)
        if not use_mirror:
            runner.attn_backend.mirror = None
        prompts = [rand_tokens(n, seed=n) for n in (3, 30, 17)]
        d.extend([(f"r{i}", p) for i, p in enumerate(prompts)])
        steps = [d.decode([(f"r{i}", 5 + s) for i in range(3)]) for s in range(4)]
        steps.append(d.decode([("r2", 9), ("r0", 9)]))
        outs.append(torch.cat(steps))
    assert max_diff(outs[0], outs[1]) <= 1e-5
