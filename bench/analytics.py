"""Analytics phase (issue 14): rollup reads against raw reads, and what rollup upkeep costs ingest.

Queries run against a dedicated database (`bench_analytics`, `bench_analytics_quick` for
--quick) that is kept between runs: it is reused when its stamp (the migrations' checksums
and the data set's shape) matches, so repeated runs do not reload ~10 M readings. Data:
- "sparse": 100 devices, metric `flow`, one reading every 10 minutes for 365 days;
- "dense": 4 devices x 4 metrics at 1 Hz for the last 4 days.
Raw rows are generated inside PostgreSQL (generate_series), then the rollups are built
from them in one GROUP BY per grain (what the fold would have done batch by batch, at a
fraction of the load time) and the fold's cursor is moved past the load's stream_events.

Each query is timed over HTTP against the service (one keep-alive client, sequential), once
as the service answers it (`source` auto: rollups plus raw edges) and once with
`source=raw` (the raw-rows baseline, the same answer), in the same run.

Upkeep: bench/rollup_upkeep.py.
"""

from __future__ import annotations

import hashlib
import random
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import orjson
import psycopg

from backend.store.migrations import MigrationChanged, migrate
from backend.store.partitions import month_start

from . import rollup_upkeep
from .load import get_sequential, percentile
from .server import Gunicorn, wait_for_quiet

if TYPE_CHECKING:
    from .run import Bench

_SPARSE = """
INSERT INTO telemetry_readings (device_id, metric, ts, value, received_at)
SELECT 's' || lpad(d::text, 3, '0'), 'flow', t.ts, ((d * 37 + g.i * 11) %% 2000)::float8 / 10, t.ts
FROM generate_series(%(i0)s::int, %(i1)s::int) AS g(i)
CROSS JOIN LATERAL (SELECT %(end)s::timestamptz - (%(n)s - g.i) * interval '10 minutes' AS ts) AS t
CROSS JOIN generate_series(0, %(devices)s - 1) AS d
"""
_DENSE = """
INSERT INTO telemetry_readings (device_id, metric, ts, value, received_at)
SELECT 'd' || lpad(d::text, 3, '0'), m.name, t.ts, ((d * 37 + g.i * m.k) %% 2000)::float8 / 10, t.ts
FROM generate_series(%(i0)s::int, %(i1)s::int) AS g(i)
CROSS JOIN LATERAL (SELECT %(end)s::timestamptz - (%(n)s - g.i) * interval '1 second' AS ts) AS t
CROSS JOIN generate_series(0, %(devices)s - 1) AS d
CROSS JOIN (VALUES ('roll', 3), ('pitch', 5), ('alt', 7), ('bat_v', 13)) AS m(name, k)
"""
_BACKFILL = [
    "INSERT INTO telemetry_rollup_1m SELECT device_id, metric, date_bin('1 minute', ts, TIMESTAMPTZ '2000-01-01Z'),"
    " count(*), sum(value), min(value), max(value), min(ts), (array_agg(value ORDER BY ts))[1], max(ts),"
    " (array_agg(value ORDER BY ts DESC))[1] FROM telemetry_readings WHERE value IS NOT NULL GROUP BY 1, 2, 3",
    *[f"INSERT INTO telemetry_rollup_{to} SELECT device_id, metric, date_bin('{iv}', bucket, TIMESTAMPTZ '2000-01-01Z'),"
      " sum(count)::bigint, sum(sum), min(min), max(max), min(first_ts), (array_agg(first_value ORDER BY first_ts))[1],"
      f" max(last_ts), (array_agg(last_value ORDER BY last_ts DESC))[1] FROM telemetry_rollup_{fr} GROUP BY 1, 2, 3"
      for fr, to, iv in (("1m", "1h", "1 hour"), ("1h", "1d", "1 day"))],
]


def shape(quick: bool) -> dict[str, int]:
    if quick:
        return {"sparse_devices": 10, "sparse_days": 40, "dense_devices": 1, "dense_days": 1}
    return {"sparse_devices": 100, "sparse_days": 365, "dense_devices": 4, "dense_days": 4}


# Bump when the generated data or what the rollups hold changes: the kept database is then
# made again. Other new migrations are applied to the kept database (migrate() is a no-op
# when it is up to date), so an index added later does not cost a reload.
DATA_VERSION = 1


def stamp(quick: bool) -> str:
    return hashlib.sha256(orjson.dumps([DATA_VERSION, shape(quick)])).hexdigest()[:16]


def _dbname_url(url: str, name: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(url)
    info["dbname"] = name
    return psycopg.conninfo.make_conninfo(**info)


def dataset(bench: Bench) -> tuple[str, dict[str, Any]]:
    """The kept database (made when missing or stale); its URL and description."""
    quick = bench.plan.quick
    name = "bench_analytics_quick" if quick else "bench_analytics"
    url = _dbname_url(bench.url, name)
    want = stamp(quick)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            row = conn.execute("SELECT stamp, info FROM bench_analytics_meta").fetchone()
        if row and row[0] == want:
            applied = migrate(url)
            bench.log(f"analytics: reusing database {name} (stamp {want}; migrations applied now: {applied})")
            return url, {**row[1], "reused": True}
    except (psycopg.Error, MigrationChanged):  # missing, or made by a tree whose migrations differ: made again
        pass
    with psycopg.connect(bench.url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    migrate(url)
    s = shape(quick)
    end = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=1)
    t0 = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        first = month_start((end - timedelta(days=s["sparse_days"] + 1)).date())
        conn.execute("SELECT telemetry_ensure_partitions(%s, 16), telemetry_rollup_ensure_partitions(%s, 16)",
                     (first, first))
        n_sparse = s["sparse_days"] * 144
        for i0 in range(0, n_sparse, 20_000):
            conn.execute(_SPARSE, {"i0": i0, "i1": min(i0 + 20_000, n_sparse) - 1, "n": n_sparse, "end": end,
                                   "devices": s["sparse_devices"]})
        n_dense = s["dense_days"] * 86400
        for i0 in range(0, n_dense, 50_000):
            conn.execute(_DENSE, {"i0": i0, "i1": min(i0 + 50_000, n_dense) - 1, "n": n_dense, "end": end,
                                  "devices": s["dense_devices"]})
        load_s = time.perf_counter() - t0
        for stmt in _BACKFILL:
            conn.execute(stmt)
        # The load's readings are in the rollups now: the fold starts after them (and the
        # stream's log of them, a million readings a second of load, is of no use to anyone).
        conn.execute("INSERT INTO telemetry_rollup_cursor (last_id) SELECT coalesce(max(id), 0) FROM stream_events"
                     " ON CONFLICT (one) DO UPDATE SET last_id = excluded.last_id")
        conn.execute("DELETE FROM stream_events")
        rollup_s = time.perf_counter() - t0 - load_s
        conn.execute("VACUUM ANALYZE")
        counts = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                  for t in ("telemetry_readings", "telemetry_rollup_1m", "telemetry_rollup_1h", "telemetry_rollup_1d")}
        info = {**s, "end": end.isoformat(), "rows": counts, "load_s": round(load_s, 1),
                "rollup_build_s": round(rollup_s, 1), "total_s": round(time.perf_counter() - t0, 1)}
        conn.execute("CREATE TABLE bench_analytics_meta (stamp text, info jsonb)")
        conn.execute("INSERT INTO bench_analytics_meta VALUES (%s, %s)", (want, orjson.dumps(info).decode()))
    bench.log(f"analytics: made {name}: {counts['telemetry_readings']:,} readings in {load_s:.0f} s,"
              f" rollups in {rollup_s:.0f} s")
    return url, {**info, "reused": False}


def _queries(info: dict[str, Any], rnd: random.Random) -> dict[str, tuple[str, Any]]:
    end = datetime.fromisoformat(info["end"])

    def window(days: float) -> str:
        e = end - timedelta(seconds=rnd.randrange(3600), microseconds=rnd.randrange(10**6))  # not aligned
        return f"start={(e - timedelta(days=days)).isoformat()}&end={e.isoformat()}".replace("+", "%2B")

    def dense() -> str:
        return f"d{rnd.randrange(info['dense_devices']):03d}"

    def sparse() -> str:
        return f"s{rnd.randrange(info['sparse_devices']):03d}"

    return {
        "24h_1m": ("target p99 < 20 ms", lambda: f"/telemetry/aggregate?metric=alt&device_id={dense()}&bucket=1m&"
                                                 + window(1)),
        "30d_1h": ("target p99 < 10 ms", lambda: f"/telemetry/aggregate?metric=flow&device_id={sparse()}&bucket=1h&"
                                                 + window(30)),
        "365d_1d_fleet": ("target < 50 ms", lambda: "/telemetry/aggregate?metric=flow&bucket=1d&group_by=fleet&"
                                                    + window(365)),
        "365d_1d_per_device": ("target < 50 ms", lambda: "/telemetry/aggregate?metric=flow&bucket=1d&" + window(365)),
        # The same 36,600 points as arrays per device (layout=series): 100 objects instead of 36,600.
        "365d_1d_per_device_series": ("target < 50 ms", lambda: "/telemetry/aggregate?metric=flow&bucket=1d"
                                                                "&layout=series&" + window(365)),
    }


def _time(srv: Gunicorn, paths: list[str]) -> dict[str, Any]:
    sources: set[str] = set()

    def check(data: bytes) -> str | None:
        body = orjson.loads(data)
        sources.add(body.get("source"))
        return None if body.get("count", 0) > 0 else f"empty answer: {data[:200]!r}"

    run = get_sequential(srv.url, paths, srv.headers(), check)
    lat = run.latencies_ms
    return {"samples": len(lat), "ok": run.ok, "errors": run.errors[:2], "sources": sorted(map(str, sources)),
            "p50_ms": round(percentile(lat, 50), 2), "p99_ms": round(percentile(lat, 99), 2)}


def query_latency(bench: Bench, url: str, info: dict[str, Any]) -> dict[str, Any]:
    quick = bench.plan.quick
    rnd = random.Random(14)
    srv = Gunicorn(url, bench.workdir / "analytics")
    out: dict[str, Any] = {}
    try:
        srv.start()
        for name, (target, make) in _queries(info, rnd).items():
            get_sequential(srv.url, [make() for _ in range(5)], srv.headers())  # warm-up (caches, plans)
            # The phases before leave work behind (autovacuum of the millions of rows they wrote
            # takes a core for a minute): the samples wait for it, as they would for other jobs.
            busy = wait_for_quiet(0 if quick else 90)
            n = 10 if quick else (200 if name.startswith("365d") else 500)
            rollup = _time(srv, [make() for _ in range(n)])
            rollup["machine_busy_before"] = round(busy, 2)
            n_raw = 3 if quick else (5 if name.startswith("365d") else 50)
            raw = _time(srv, [make() + "&source=raw" for _ in range(n_raw)])
            out[name] = {"target": target, "rollup": rollup, "raw": raw,
                         "speedup_p50": round(raw["p50_ms"] / max(rollup["p50_ms"], 1e-9), 1)}
            bench.log(f"analytics {name}: {rollup['sources']} p50 {rollup['p50_ms']} ms p99 {rollup['p99_ms']} ms;"
                      f" raw p50 {raw['p50_ms']} ms p99 {raw['p99_ms']} ms ({target})")
    finally:
        srv.stop()
    return out


def run(bench: Bench) -> dict[str, Any]:
    """The whole phase: one call from bench/run.py (the upkeep A/B brings its own servers)."""
    url, info = dataset(bench)
    return {"dataset": info, "queries": query_latency(bench, url, info), "upkeep": rollup_upkeep.upkeep(bench)}


def render(r: dict[str, Any]) -> list[str]:
    return render_queries(r) + rollup_upkeep.render(r["upkeep"])


def render_queries(r: dict[str, Any]) -> list[str]:
    d = r["dataset"]
    rows = d["rows"]
    lines = ["", "### Analytics: rollups against raw rows (issue 14)", "",
             f"Dataset {'reused' if d.get('reused') else 'made this run'}: {rows['telemetry_readings']:,} readings"
             f" ({d['sparse_devices']} devices every 10 min for {d['sparse_days']} days; {d['dense_devices']} devices"
             f" x 4 metrics at 1 Hz for {d['dense_days']} days); rollup rows 1m {rows['telemetry_rollup_1m']:,},"
             f" 1h {rows['telemetry_rollup_1h']:,}, 1d {rows['telemetry_rollup_1d']:,}. Over HTTP, one client,"
             " sequential; the raw baseline is the same request with `source=raw`.", "",
             "| query | source | p50 ms | p99 ms | raw p50 ms | raw p99 ms | raw / rollup (p50) | target |",
             "|---|---|---|---|---|---|---|---|"]
    for name, q in r["queries"].items():
        lines.append(f"| {name} | {', '.join(q['rollup']['sources'])} | {q['rollup']['p50_ms']} | {q['rollup']['p99_ms']}"
                     f" | {q['raw']['p50_ms']} | {q['raw']['p99_ms']} | {q['speedup_p50']} | {q['target']} |")
    return lines + [""]


def main(argv: list[str] | None = None) -> int:
    """`python -m bench.analytics [--quick]`: this phase alone (a scratch database for the ingest A/B)."""
    import argparse
    import json
    import os
    import shutil
    import tempfile
    from pathlib import Path

    from .run import RESULTS_DIR, Bench, Plan, resolve_admin_url, scratch_database

    ap = argparse.ArgumentParser(prog="python -m bench.analytics", description=main.__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--queries-only", action="store_true",
                    help="only the read latencies (no ingest A/B): for iterating on the read path")
    args = ap.parse_args(argv)
    admin, handle = resolve_admin_url(None)
    workdir = Path(tempfile.mkdtemp(prefix="bench-analytics-"))
    with scratch_database(admin, f"bench_analytics_ab_{os.getpid()}") as url:
        bench = Bench(Plan.make(args.quick), url, workdir)
        if args.queries_only:
            data_url, info = dataset(bench)
            results = {"dataset": info, "queries": query_latency(bench, data_url, info)}
        else:
            results = run(bench)
    del handle
    shutil.rmtree(workdir, ignore_errors=True)
    print("\n".join(render(results) if "upkeep" in results else render_queries(results)))
    out = RESULTS_DIR / f"analytics{'_quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str))
    print(f"[bench] wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
