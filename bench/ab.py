"""A/B runs: two or more trees (or settings) side by side, taking turns, same machine, same minute.

    .venv/bin/python -m bench.ab single bare=.:bench.bare_app:app old=/tmp/old new=.
    .venv/bin/python -m bench.ab batched old=/tmp/old "new=.?GUNICORN_THREADS=8" --rounds 3

Each argument is `label=ROOT[:APP][?ENV=VALUE&...]`: a checkout (`git worktree add /tmp/old
<commit>`), optionally a baseline app (`bench.bare_app:app`, `bench.seed_app:app`) and
environment for its gunicorn (`QS=?store=false` is appended to the ingest URL instead).
Every server gets its own scratch database, migrated by its own tree, so trees with
different migrations can be compared. The rounds interleave the servers, so a change in the
machine's other load hits all of them alike; figures move 10-20% between rounds here, which
is why docs/benchmarks.md quotes ranges and medians from these runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

from backend.store.migrations import migrate
from backend.store.partitions import ensure_partitions

from .load import run_wrk
from .run import SEED_SCHEMA, Bench, Plan, resolve_admin_url, with_dbname
from .server import Gunicorn, ProcWatch


def parse_spec(arg: str) -> tuple[str, Path, str | None, dict[str, str], str]:
    label, _, rest = arg.partition("=")
    env: dict[str, str] = {}
    if "?" in rest:
        rest, query = rest.split("?", 1)
        env = dict(kv.split("=", 1) for kv in query.split("&") if kv)
    root, _, app = rest.partition(":")
    return label, Path(root).resolve(), app or None, env, env.pop("QS", "")


def single(servers: dict[str, Gunicorn], urls: dict[str, str], qs: dict[str, str], rounds: int,
           seconds: int) -> None:
    base = time.time() - 3600
    for label, srv in servers.items():  # warm-up
        run_wrk("single.lua", srv.url + "/telemetry/parse" + qs[label], [srv.api_key, f"{base - 600:.3f}",
                f"w{label}"], 32, 2, 2)
    rows: dict[str, list[dict[str, float]]] = {label: [] for label in servers}
    for rnd in range(rounds):
        for label, srv in servers.items():
            with ProcWatch(srv, urls[label]) as watch:
                r = run_wrk("single.lua", srv.url + "/telemetry/parse" + qs[label],
                            [srv.api_key, f"{base:.3f}", f"r{rnd}{label}"], 32, seconds, 2)
            s = watch.summary(extra_cpu_s=r["wrk_cpu_s"])
            n = max(1, r["ok"])
            row = {"rps": r["rps"], "p50": r["p50_us"] / 1000, "p99": r["p99_us"] / 1000,
                   "gunicorn": s["server_cpu_s"] / n * 1000, "pg": s["postgres_cpu_s"] / n * 1000}
            rows[label].append(row)
            print(f"{label:>10} round {rnd + 1}: {row['rps']:7.0f} req/s  p50 {row['p50']:5.1f}  p99 {row['p99']:6.1f} ms"
                  f"  CPU/request gunicorn {row['gunicorn']:.2f} + PostgreSQL {row['pg']:.2f} ms"
                  f"  non-2xx {r['status_errors']}", flush=True)
    for label, rs in rows.items():
        def med(key: str, rs: list[dict[str, float]] = rs) -> float:
            return statistics.median(x[key] for x in rs)
        print(f"MEDIAN {label:>10}: {med('rps'):7.0f} req/s  p50 {med('p50'):5.1f}  p99 {med('p99'):6.1f} ms"
              f"  CPU/request gunicorn {med('gunicorn'):.2f} + PostgreSQL {med('pg'):.2f} ms")


def batched(servers: dict[str, Gunicorn], urls: dict[str, str], rounds: int, readings: int, clients: int,
            formats: list[str], workdir: Path) -> None:
    plan = dataclasses.replace(Plan.make(False), batch_readings=readings, batch_clients=clients)
    for rnd in range(rounds):
        msgs = None
        for label, srv in servers.items():
            bench = Bench(plan, urls[label], workdir)
            msgs = msgs or bench.batch_messages(time.time() - 3 * 3600 - rnd * 1000)
            for fmt in formats:
                bench.tag = f"{label}{rnd}"
                o: dict[str, Any] = bench.batched(srv, fmt, msgs)
                print(f"{label:>10} {fmt:4} round {rnd + 1}: {o['readings_per_s']:8.0f} readings/s"
                      f"  CPU/reading gunicorn {o['server_cpu_s'] / o['readings'] * 1e6:.1f}"
                      f" + PostgreSQL {o['postgres_cpu_s'] / o['readings'] * 1e6:.1f} us"
                      f"  request p99 {o['p99_ms']:.0f} ms", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=("single", "batched"))
    ap.add_argument("servers", nargs="+", metavar="label=ROOT[:APP][?ENV=V&...]")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5, help="single: seconds per round")
    ap.add_argument("--readings", type=int, default=200_000, help="batched: readings per round and server")
    ap.add_argument("--clients", type=int, default=16, help="batched: client connections")
    ap.add_argument("--formats", default="raw,json", help="batched: raw,json")
    ap.add_argument("--admin-url", help="PostgreSQL server for the scratch databases")
    args = ap.parse_args(argv)
    admin_url, handle = resolve_admin_url(args.admin_url)
    stamp = time.strftime("%Y%m%d_%H%M%S")
    workdir = Path(tempfile.mkdtemp(prefix="bench-ab-"))
    servers: dict[str, Gunicorn] = {}
    urls: dict[str, str] = {}
    qs: dict[str, str] = {}
    dbnames: list[str] = []
    try:
        for spec in args.servers:
            label, root, app, env, query = parse_spec(spec)
            dbname = f"ab_{stamp}_{label}"
            dbnames.append(dbname)
            with psycopg.connect(admin_url, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{dbname}"')
            urls[label] = with_dbname(admin_url, dbname)
            qs[label] = query
            if app:  # a baseline app does not migrate; the service's gunicorn hook does
                migrate(urls[label])
                with psycopg.connect(urls[label], autocommit=True) as conn:
                    ensure_partitions(conn, 3)
                    conn.execute(SEED_SCHEMA)
            servers[label] = Gunicorn(urls[label], workdir / label, app, env=env, root=root).start()
        if args.mode == "single":
            single(servers, urls, qs, args.rounds, args.seconds)
        else:
            batched(servers, urls, args.rounds, args.readings, args.clients, args.formats.split(","), workdir)
    finally:
        for srv in servers.values():
            srv.stop()
        with psycopg.connect(admin_url, autocommit=True) as conn:
            for dbname in dbnames:
                conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        del handle
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
