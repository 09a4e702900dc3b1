"""Figures for docs/scaling.md: one and two instances behind one nginx, through PgBouncer
(transaction mode) to one PostgreSQL, rate limits in Redis.

    python -m bench.scaling [--seconds 15] [--threads 8]

Each configuration gets the same load (LoadGen: gateways posting 20-line bodies with an
ingest key, so every request also costs a Redis rate-limit hit) and reports readings/s, request
latency, WAL bytes per reading, server connections PostgreSQL saw, and Redis commands per
request. Not part of `make bench`: it starts 1-3 gunicorns, nginx and PgBouncer.
"""

from __future__ import annotations

import argparse
import json
import secrets
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
import redis

from tests import pgbouncer
from tests.live_server import LiveServer, wait_for
from tests.loadgen import LoadGen
from tests.test_nginx import start_nginx

REDIS_URL = "redis://127.0.0.1:6379/12"


def _scratch(admin: str) -> str:
    from backend.store.migrations import migrate
    from backend.store.partitions import ensure_partitions

    name = f"telemetry_scaling_{secrets.token_hex(3)}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    info = psycopg.conninfo.conninfo_to_dict(admin)
    info["dbname"] = name
    url = psycopg.conninfo.make_conninfo(**info)
    migrate(url)
    with psycopg.connect(url, autocommit=True) as conn:
        ensure_partitions(conn, 3)
    return url


def measure(url: str, instances: int, pooled: bool, seconds: float, threads: int, workdir: Path) -> dict[str, Any]:
    bouncer = pgbouncer.PgBouncer(url, pool_size=8).start() if pooled else None
    admin = "bench-admin-" + secrets.token_hex(8)
    servers: list[LiveServer] = []
    nginx = None
    try:
        for i in range(instances):
            env = {"DATABASE_URL": bouncer.url_for(url) if bouncer else url, "REDIS_URL": REDIS_URL,
                   "ADMIN_API_KEY": admin, "PROXY_FIX_HOPS": "1", "RATE_LIMIT_DEFAULT": "100000000/minute",
                   "RATE_LIMIT_IP": "100000000/minute", "LOG_LEVEL": "ERROR", "FLUSH_INTERVAL": "1.0"}
            server = LiveServer(url, workdir / f"i{instances}-{int(pooled)}-{i}", env, workers=2, threads=8)
            server.api_key = admin
            servers.append(server.start(60))
        nginx, port = start_nginx(workdir / f"nginx-{instances}-{int(pooled)}", [s.port for s in servers])
        base = f"http://127.0.0.1:{port}"
        key = servers[0].post("/api/keys", json={"name": "bench", "scopes": ["ingest"]}).json()["key"]
        r = redis.Redis.from_url(REDIS_URL)
        with psycopg.connect(url, autocommit=True) as conn:
            lsn0 = conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
            cmds0 = int(r.info("stats")["total_commands_processed"])
            lg = LoadGen(base, {"X-API-Key": key}, threads=threads, lines_per_post=20)
            started = time.monotonic()
            lg.start()
            peak_backends = 0
            while time.monotonic() - started < seconds:
                row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                                   " AND pid <> pg_backend_pid()").fetchone()
                peak_backends = max(peak_backends, int(row[0]) if row else 0)
                time.sleep(0.5)
            lg.stop()
            elapsed = time.monotonic() - started
            wal = conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)", (lsn0,)).fetchone()[0]
            cmds = int(r.info("stats")["total_commands_processed"]) - cmds0
        verdict = lg.wait_until_stored(url, 60)
        summary = lg.stats.summary()
        readings = verdict.acked
        return {"instances": instances, "pooler": "pgbouncer transaction" if pooled else "direct",
                "readings_per_s": round(readings / elapsed), "requests_per_s": round(summary["2xx"] / elapsed),
                "p50_ms": summary["p50_ms"], "p99_ms": summary["p99_ms"], "lost": verdict.lost,
                "duplicates": verdict.duplicates, "wal_bytes_per_reading": round(float(wal) / max(1, readings)),
                "peak_server_connections": peak_backends,
                "redis_commands_per_request": round(cmds / max(1, summary["posts"]), 1)}
    finally:
        if nginx is not None:
            nginx.terminate()
            nginx.wait(10)
        for server in servers:
            server.stop(30)
        if bouncer is not None:
            bouncer.destroy()


def main(argv: list[str] | None = None) -> int:
    import os

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args(argv)
    admin = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    url = _scratch(admin)
    rows = []
    try:
        with tempfile.TemporaryDirectory(prefix="telemetry-scaling-") as tmp:
            for instances, pooled in ((1, False), (1, True), (2, True)):
                rows.append(measure(url, instances, pooled, args.seconds, args.threads, Path(tmp)))
                print(json.dumps(rows[-1]), flush=True)
                wait_for(lambda: True)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{psycopg.conninfo.conninfo_to_dict(url)["dbname"]}" WITH (FORCE)')
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
