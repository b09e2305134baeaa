"""Pure logic of benchmarks/pd_vs_unified_report.py (bench_pd_vs_unified.py's figures): percentiles
as numpy computes them, merging side-by-side bench_serving runs, PD/unified ratios and the
target's verdict, the stall check's split of a stream's gaps by transfer windows, the headline
JSON and the PNG."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import pd_vs_unified_report as rep  # noqa: E402


@pytest.mark.parametrize("q", [0, 10, 50, 90, 99, 100])
def test_percentile_matches_numpy(q):
    xs = list(np.random.RandomState(q).exponential(size=57))
    assert rep.percentile(xs, q) == pytest.approx(float(np.percentile(xs, q)))
    assert rep.percentile([], q) == 0.0


def test_itls_split_a_chunk_of_k_tokens_into_k_gaps():
    assert rep.itls([(0.0, 1), (0.1, 1), (0.4, 3)]) == pytest.approx([0.1, 0.1, 0.1, 0.1])


def test_merge_counts_failed_requests_out_and_takes_the_longest_duration():
    chat = {"ttfts": [0.1, 0.0, 0.3], "itls": [[0.01, 0.02], [], [0.05]],
            "output_lens": [3, 0, 2], "duration": 4.0}
    long = {"ttfts": [2.0], "itls": [[0.5]], "output_lens": [2], "duration": 5.0}
    m = rep.merge_bench_results([chat, long])
    assert (m["completed"], m["failed"], m["output_tokens"]) == (3, 1, 7)
    assert m["output_throughput"] == pytest.approx(7 / 5.0)
    assert m["ttft"]["max"] == 2.0 and m["itl"]["max"] == 0.5
    assert sorted(m["itl_samples"]) == [0.01, 0.02, 0.05, 0.5]


def _run(itl_p99: float, tput: float) -> dict:
    return rep.summarize([0.1, 0.2], [0.01] * 98 + [itl_p99] * 2, int(tput * 10), 10.0)


def test_ratios_and_verdict():
    u, good, slow = _run(0.4, 100), _run(0.1, 90), _run(0.1, 70)
    r = rep.ratios(good, u)
    assert r["itl_p99"] == pytest.approx(good["itl"]["p99"] / u["itl"]["p99"])
    assert r["output_throughput"] == pytest.approx(0.9)
    assert rep.verdict(r)["met"]
    v = rep.verdict(rep.ratios(slow, u))
    assert v["itl_p99_ok"] and not v["throughput_ok"] and not v["met"]
    assert not rep.verdict(rep.ratios(u, good))["itl_p99_ok"]
    zero = rep.summarize([], [], 0, 0.0)
    assert math.isnan(rep.ratios(good, zero)["output_throughput"])


def test_split_by_windows_and_stall_ratio():
    # gaps of 10 ms, except 12 ms for chunks arriving inside the window [1.0, 1.5]
    t, chunks = 0.0, []
    while t < 3.0:
        t += 0.012 if 1.0 <= t + 0.012 <= 1.5 else 0.010
        chunks.append((t, 1))
    quiet, busy = rep.split_by_windows(chunks, [(1.0, 1.5)], skip=2)
    assert len(quiet) + len(busy) == len(chunks) - 3
    assert all(g == pytest.approx(0.012) for g in busy)
    s = rep.stall_ratio(quiet, busy)
    assert s["median_ratio"] == pytest.approx(1.2)
    assert math.isnan(rep.stall_ratio(quiet, [])["median_ratio"])


def test_headline_is_one_json_line_and_plot_writes_a_png(tmp_path):
    runs = {("unified", 1.0): _run(0.4, 100), ("pd", 1.0): _run(0.1, 90),
            ("unified", 2.0): _run(0.5, 150), ("pd", 2.0): _run(0.4, 100)}
    stall = rep.stall_ratio([0.01] * 5, [0.0105] * 5)
    h = rep.headline([1.0, 2.0], runs, stall, {"unified": "x"})
    line = json.dumps(h)
    assert "\n" not in line and json.loads(line)["stall_within_10pct"] is True
    assert [p["target_met"] for p in h["per_rate"]] == [True, False]
    png = rep.plot([1.0, 2.0], runs, str(tmp_path / "x.png"), "t")
    assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
