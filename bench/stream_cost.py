"""`python -m bench.stream_cost`: the stream's CPU per subscriber write, without ingest around it.

The stream phase (bench/stream.py) measures what subscribers cost ingest, but on a shared
2-core machine its readings/s swing by a third between identical runs. This measures the
stream's own cost directly: one stream process (`python -m backend.live`), N subscribers
(bench/stream_clients.py, as the stream phase runs them) and a writer that inserts
`stream_events` rows straight into the table at a fixed rate (the rows ingest's trigger
would write: `--flush-readings` readings over `--devices` devices per flush, `--flushes`
per second, plus `--probes` one-reading rows per second for device `probe`), each with
the NOTIFY a commit sends. PostgreSQL does almost nothing, so the CPU seconds of the stream
process and of the clients over `--seconds` are theirs alone: with the dispatches and
subscriber writes per second, the cost of each.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import psutil
import psycopg
import requests

from backend.live.tokens import StreamTokens

from .run import resolve_admin_url, scratch_database
from .server import ROOT, free_port
from .stream import wait_stream_up

SECRET = "bench-stream-cost-secret-0123456789"


def _cpu(p: psutil.Process) -> float:
    t = p.cpu_times()
    return t.user + t.system


def writer(url: str, args: argparse.Namespace, stop: threading.Event) -> int:
    """Rows at a fixed rate, each in its own transaction with its NOTIFY, until `stop`."""
    flush = orjson.dumps([[f"sd{k % args.devices}", "abcd"[k // args.devices % 4], "2026-12-06T10:00:00.123+00:00",
                           k / 7, None] for k in range(args.flush_readings)]).decode()
    probe = orjson.dumps([["probe", "p", "2026-12-06T10:00:00.123+00:00", 1.0, None]]).decode()
    # One schedule for both kinds: (time, payload), merged in time order.
    slots = sorted([(k / args.flushes, flush) for k in range(int(args.flushes * args.seconds))] +
                   [(k / args.probes, probe) for k in range(int(args.probes * args.seconds))])
    rows = 0
    with psycopg.connect(url, autocommit=True) as conn:
        t0 = time.monotonic()
        for at, payload in slots:
            if stop.is_set():
                break
            pause = t0 + at - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            with conn.transaction():
                conn.execute("INSERT INTO stream_events (n, readings) VALUES (%s, %s::jsonb)",
                             (args.flush_readings if payload is flush else 1, payload))
                conn.execute("SELECT pg_notify('telemetry_stream', '')")
            rows += 1
    return rows


def measure(url: str, args: argparse.Namespace, coalesce_ms: int) -> dict[str, Any]:
    port = free_port()
    env = {**os.environ, "DATABASE_URL": url, "STREAM_PORT": str(port), "STREAM_TOKEN_SECRET": SECRET,
           "STREAM_COALESCE_MS": str(coalesce_ms), "LOG_LEVEL": "WARNING", "REDIS_URL": "",
           "STREAM_MAX_SUBSCRIBERS": "5000"}
    # --root: another checkout's stream process and clients (before/after comparisons)
    root = args.root or ROOT
    stream = subprocess.Popen([sys.executable, "-m", "backend.live"], cwd=root, env=env)
    clients: subprocess.Popen[str] | None = None
    try:
        base = f"http://127.0.0.1:{port}/api/stream"
        wait_stream_up(base + "/health")
        token = StreamTokens(SECRET, 300).issue("bench")
        clients = subprocess.Popen([sys.executable, "-m", "bench.stream_clients", "--url", base, "--token", token,
                                    "--n", str(args.subscribers)], cwd=root, stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, text=True)
        hello = orjson.loads(clients.stdout.readline())  # type: ignore[union-attr]
        if hello["ready"] != args.subscribers:
            raise RuntimeError(f"subscribers: {hello}")
        procs = {"stream": psutil.Process(stream.pid), "clients": psutil.Process(clients.pid)}
        h0 = requests.get(base + "/health", timeout=10).json()
        cpu0 = {k: _cpu(p) for k, p in procs.items()}
        t0 = time.monotonic()
        rows = writer(url, args, threading.Event())
        time.sleep(0.5)  # the last rows' writes
        wall = time.monotonic() - t0
        cpu = {k: _cpu(p) - cpu0[k] for k, p in procs.items()}
        h1 = requests.get(base + "/health", timeout=10).json()
        got, _ = clients.communicate("stop\n", timeout=60)
        res = orjson.loads(got.strip().splitlines()[-1])
    finally:
        if clients is not None and clients.poll() is None:
            clients.kill()
        stream.terminate()
        stream.wait(10)
    writes = h1.get("offers", 0) - h0.get("offers", 0)
    out = {"coalesce_ms": coalesce_ms, "rows": rows, "wall_s": round(wall, 2),
           "dispatches_per_s": round((h1.get("dispatches", 0) - h0.get("dispatches", 0)) / wall, 1),
           "writes_per_s": round(writes / wall), "recvs_per_s": round(res.get("recvs", 0) / wall),
           "kb_per_s": round(res.get("bytes", 0) / wall / 1024), "readings_received": res["readings"], "missed": res["missed"],
           "stream_cores": round(cpu["stream"] / wall, 3), "clients_cores": round(cpu["clients"] / wall, 3),
           "stream_us_per_write": round(cpu["stream"] / max(writes, 1) * 1e6, 1),
           "clients_us_per_write": round(cpu["clients"] / max(writes, 1) * 1e6, 1),
           "lag_ms": h1["lag_ms"], "load_average_1m": round(os.getloadavg()[0], 1)}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.stream_cost", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subscribers", type=int, default=500)
    ap.add_argument("--devices", type=int, default=500)
    ap.add_argument("--flush-readings", type=int, default=2000)
    ap.add_argument("--flushes", type=float, default=10.0, help="flush rows per second")
    ap.add_argument("--probes", type=float, default=20.0, help="probe rows per second")
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--coalesce-ms", type=int, nargs="+", default=[50])
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--admin-url")
    ap.add_argument("--root", type=Path, help="run another checkout's stream process and clients")
    args = ap.parse_args(argv)
    admin_url, handle = resolve_admin_url(args.admin_url)
    try:
        with scratch_database(admin_url, f"bench_cost_{datetime.now(UTC):%Y%m%d_%H%M%S}_{os.getpid()}") as url:
            for _ in range(args.rounds):
                for c in args.coalesce_ms:
                    print(orjson.dumps(measure(url, args, c)).decode(), flush=True)
    finally:
        del handle
    return 0


if __name__ == "__main__":
    sys.exit(main())
