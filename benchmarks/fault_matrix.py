"""The kill -9 fault matrix of a PD pair, as a table for the closing note.

    python benchmarks/fault_matrix.py [--backend mooncake|nixl|both] [--together] [--quick]
        [--model-path DIR]

For each backend, one prefill and one decode (real processes, short heartbeats and timeouts, see
sglang/test/fault_matrix.py); for each side and stage (bootstrapping, pages pre-allocated on the
decode, transfer in flight, decoding), one request is held at the stage, the side's whole process
group gets SIGKILL, the survivor's answer is recorded with the time from the kill, then the
killed server restarts on the same ports and a new request goes through the same survivor.
Prints a text table (fault, what the survivor's client saw, what the killed server's client saw,
seconds to the error, pages leaked on the survivor, recovery) and a final JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sglang.test import fault_matrix as fm  # noqa: E402
from sglang.test.server_utils import launch_server  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="both", choices=["mooncake", "nixl", "both"])
    ap.add_argument("--model-path", default=None)
    ap.add_argument("--together", action="store_true",
                    help="hold all four stages at once and kill each side once (as the test "
                         "does); default: one kill and restart per cell")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run (about a minute): Mooncake only, --together")
    args = ap.parse_args()
    if args.quick:
        args.backend, args.together = "mooncake", True
    model = args.model_path
    if model is None:
        from sglang.tools.create_model import cached_model

        model = cached_model("tiny", Path(os.environ.get("SGLANG_TEST_MODEL_DIR",
                                                          ROOT / "models")), 0)
    log_dir = tempfile.mkdtemp(prefix="fault-matrix-")
    backends = ["mooncake", "nixl"] if args.backend == "both" else [args.backend]
    t0 = time.time()
    ref = launch_server(model, log_dir, "reference", fm.ARGS)
    rows = []
    try:
        want = fm.reference(ref.url, fm.SHORT)
        for backend in backends:
            pair = fm.Pair(model, f"{log_dir}/{backend}", backend).launch()
            try:
                for killed in fm.SIDES:
                    groups = [fm.STAGES] if args.together else [[s] for s in fm.STAGES]
                    for stages in groups:
                        for cell in fm.run_cells(pair, killed, stages):
                            row = cell.row()
                            row["recovered"] = ("ok" if cell.recovered == want
                                                else f"WRONG: {cell.recovered[:60]!r}")
                            rows.append(row)
                            print(json.dumps(row), file=sys.stderr, flush=True)
            finally:
                pair.stop()
    finally:
        ref.stop()
    hdr = f"{'backend':9} {'killed':8} {'stage':14} {'s':>6} {'leak':>4} {'rec':4}  survivor's client saw | killed server's client saw"
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        print(f"{r['backend']:9} {r['killed']:8} {r['stage']:14} {r['seconds_to_error'] if r['seconds_to_error'] is not None else '-':>6} "
              f"{r['pages_leaked']:4d} {r['recovered'][:4]:4}  {r['survivor_saw']} | "
              f"{r['victim_client_saw']}")
    print(f"logs: {log_dir}")
    print(json.dumps({"fault_matrix": rows, "wall_s": round(time.time() - t0, 1),
                      "timeouts_s": fm.TIMEOUT, "heartbeat": [
                          fm.ENV["SGLANG_DISAGGREGATION_HEARTBEAT_INTERVAL"],
                          fm.ENV["SGLANG_DISAGGREGATION_HEARTBEAT_MAX_FAILURE"]]}))
    bad = [r for r in rows if r["pages_leaked"] or r["recovered"] != "ok"
           or r["survivor_health"] != 200]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
