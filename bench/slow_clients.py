"""Slow clients (issue 11): latency of a normal client while slow sockets are held open.

    .venv/bin/python -m bench.slow_clients --headers 64 --bodies 64 --duration 10

For each setting (worker class and threads) a gunicorn of this tree starts on a scratch
database; 64 slow-header and 64 slow-body connections (tests/slowloris.py) are opened, and a
client POSTs one reading every 50 ms on a new connection for `duration` s. Timeouts are set
longer than the run, so the slow sockets are open throughout. Prints p50/p99/max and how many
requests got an answer within 5 s. Figures: docs/reliability.md.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import uuid
from pathlib import Path

import psycopg

from tests.live_server import LiveServer
from tests.slowloris import SlowClients, keep_posting, p99

SETTINGS = {
    "gthread-8": ({"GUNICORN_WORKER_CLASS": "gthread"}, 8),
    "gthread-160": ({"GUNICORN_WORKER_CLASS": "gthread", "GUNICORN_WORKER_CONNECTIONS": "400"}, 160),
    "buffering-8": ({}, 8),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    ap.add_argument("--headers", type=int, default=64)
    ap.add_argument("--bodies", type=int, default=64)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("settings", nargs="*", default=list(SETTINGS))
    args = ap.parse_args()
    timeout = str(args.duration + 30)
    for name in args.settings:
        env, threads = SETTINGS[name]
        dbname = "bench_slow_" + uuid.uuid4().hex[:8]
        with psycopg.connect(args.admin_url, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {dbname}")
        url = args.admin_url.rsplit("/", 1)[0] + "/" + dbname
        try:
            with tempfile.TemporaryDirectory() as tmp:
                server = LiveServer(url, Path(tmp), {**env, "CLIENT_HEADER_TIMEOUT": timeout,
                                                     "CLIENT_BODY_TIMEOUT": timeout},
                                    workers=args.workers, threads=threads).start()
                try:
                    quiet = keep_posting(server.url, server.api_key, 3.0, device="warmup")
                    with SlowClients("127.0.0.1", server.port, args.headers, args.bodies, trickle=1.0):
                        lat = keep_posting(server.url, server.api_key, args.duration)
                finally:
                    server.stop()
        finally:
            with psycopg.connect(args.admin_url, autocommit=True) as conn:
                conn.execute(f"DROP DATABASE IF EXISTS {dbname} WITH (FORCE)")
        answered = sum(1 for t in lat if t < 5.0)
        print(f"{name:12s} workers={args.workers} threads={threads}: quiet p99 {p99(quiet) * 1000:.0f} ms;"
              f" with {args.headers}+{args.bodies} slow: p50 {statistics.median(lat) * 1000:.0f} ms,"
              f" p99 {p99(lat) * 1000:.0f} ms, max {max(lat) * 1000:.0f} ms, answered {answered}/{len(lat)}",
              flush=True)


if __name__ == "__main__":
    main()
