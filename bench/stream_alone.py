"""`python -m bench.stream_alone`: only the stream phase of `make bench` (bench/stream.py), N times.

For working on the stream's cost without the other phases' 8 minutes: a fresh database per
round (as bench/run.py makes one per run), stream_phase called as bench/run.py calls it, and
one summary line per round (latency at each subscriber count, ingest with and without
subscribers, the cores each process group used). Wrap it in `flock /tmp/bench.lock` on a
shared machine so timings of different jobs do not overlap.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .run import resolve_admin_url, scratch_database
from .stream import stream_phase, stream_targets


def one_round(admin_url: str, quick: bool) -> dict[str, Any]:
    dbname = f"bench_stream_{datetime.now(UTC):%Y%m%d_%H%M%S}_{os.getpid()}"
    with scratch_database(admin_url, dbname) as url:
        workdir = Path(tempfile.mkdtemp(prefix="bench-stream-"))
        return stream_phase(url, workdir, quick, lambda m: print(f"[stream] {m}", flush=True))


def summary(s: dict[str, Any]) -> str:
    parts = [f"baseline {s['baseline_readings_per_s']:,.0f}/s"
             f" ({', '.join(f'{x:,.0f}' for x in s['baseline_runs'])}; load {s['baseline_load']});"
             f" warm-up {s['warmup_readings_per_s']:,.0f}/s; retries {s['retries']}"]
    for n, w in s["with"].items():
        parts.append(f"{n} subs: p50 {w['p50_ms']:.0f} p99 {w['p99_ms']:.0f} ms, {w['readings_per_s']:,.0f}/s"
                     f" = {1 - w['ingest_loss']:.0%}, missed {w['missed']}, probes {w['probe_events']}"
                     f"/{w['expected_probe_events']}; subscribers took {w['subscribers_cores']} cores"
                     f" = {w['subscribers_machine_share']:.1%} of the machine")
        for run in w["runs"]:
            parts.append(f"  run: {run['readings_per_s']:,.0f}/s = {run['vs_neighbouring_baselines']:.0%},"
                         f" p50 {run['p50_ms']:.0f} p99 {run['p99_ms']:.0f} ms, {run['dispatches_per_s']} dispatches/s,"
                         f" {run['offers_per_s']} writes/s, load {run['load_average_1m']}, tries {run['tries']}, cores {run['cores']}")
    return "\n  ".join(parts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.stream_alone", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--admin-url")
    ap.add_argument("--json", type=Path, help="append each round's results to this file (one JSON per line)")
    args = ap.parse_args(argv)
    admin_url, handle = resolve_admin_url(args.admin_url)
    try:
        for i in range(args.rounds):
            t0 = time.perf_counter()
            s = one_round(admin_url, args.quick)
            s["targets"] = [{"target": t, "value": v, "met": ok} for t, v, ok in stream_targets({"stream": s})]
            print(f"[stream] round {i + 1}/{args.rounds} ({time.perf_counter() - t0:.0f} s):\n  {summary(s)}", flush=True)
            for t in s["targets"]:
                print(f"  {'met' if t['met'] else 'NOT MET'}: {t['target']}: {t['value']}", flush=True)
            if args.json:
                with args.json.open("a") as f:
                    f.write(json.dumps(s, default=str) + "\n")
    finally:
        del handle
    return 0


if __name__ == "__main__":
    sys.exit(main())
