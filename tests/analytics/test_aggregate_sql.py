"""The statement /telemetry/aggregate sends (backend/store/aggregates.py), on real PostgreSQL.

One statement, no transaction: a rollup read is kept serial by telemetry_serial_plan()
(migrations/0051) instead of SET LOCAL. These tests make parallel plans as cheap as they get
and check that a rollup read still has none, while the same text without the call has one.
"""

from __future__ import annotations

from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

from backend.analytics.buckets import BucketSpec
from backend.store import aggregates
from backend.store.aggregates import AggregateRequest, fetch_aggregate, fetch_series

T0 = datetime(2026, 5, 10, tzinfo=UTC)


class _Explaining:
    """Pool stand-in: the statement fetch_aggregate sends goes through EXPLAIN on `conn`."""

    def __init__(self, conn) -> None:
        self.conn = conn
        self.plans: list[str] = []
        self.statements: list[str] = []

    @contextmanager
    def connection(self):
        yield self

    def cursor(self, binary: bool = False):
        return self

    def execute(self, query: str, params):
        self.statements.append(query)
        self.plans.append("\n".join(r[0] for r in self.conn.execute("EXPLAIN " + query, params)))
        return self

    def fetchall(self) -> list:
        return []


def _load(db) -> None:
    db.execute("INSERT INTO telemetry_rollup_1d (device_id, metric, bucket, count, sum, min, max, first_ts,"
               " first_value, last_ts, last_value) SELECT 'd' || d, 'alt', b, 1, 1, 1, 1, b, 1, b, 1"
               " FROM generate_series(1, 50) d, generate_series(%s::timestamptz, %s, '1 day') b",
               (T0 - timedelta(days=300), T0))
    db.execute("ANALYZE telemetry_rollup_1d")
    for setting in ("parallel_setup_cost = 0", "parallel_tuple_cost = 0", "min_parallel_table_scan_size = 0",
                    "min_parallel_index_scan_size = 0", "max_parallel_workers_per_gather = 2"):
        db.execute("SET " + setting)


def test_a_rollup_read_is_planned_without_parallel_workers(db):
    _load(db)
    pool = _Explaining(db)
    for fleet in (True, False):
        req = AggregateRequest(metrics=["alt"], devices=[], start=T0 - timedelta(days=300), end=T0,
                               spec=BucketSpec("1d"), fleet=fleet)
        fetch_aggregate(pool, req)
        assert "telemetry_serial_plan()" in pool.statements[-1]
        assert "Gather" not in pool.plans[-1] and "Parallel" not in pool.plans[-1], pool.plans[-1]
    # The same text without the call: the settings above do give it parallel workers.
    unmarked = pool.statements[0].replace(" WHERE telemetry_serial_plan()", "")
    params = {"metric": "alt", "device": [], "lo0": T0 - timedelta(days=300), "hi0": T0}
    plan = "\n".join(r[0] for r in db.execute("EXPLAIN " + unmarked, params))
    assert "Gather" in plan, plan


def test_raw_reads_are_not_marked(db):
    pool = _Explaining(db)
    req = AggregateRequest(metrics=["alt"], devices=["a"], start=T0 - timedelta(days=1), end=T0,
                           spec=BucketSpec("1h"), allow_rollups=False)
    fetch_aggregate(pool, req)
    assert "telemetry_serial_plan" not in pool.statements[-1] and "rollup" not in pool.statements[-1]


def test_statement_text_is_composed_once_per_shape(db):
    pool = _Explaining(db)
    aggregates._statement.cache_clear()
    for days in (30, 31, 29):  # other values, same shape: raw and 1m edges around an hourly middle
        start = T0 - timedelta(days=days, seconds=17.5)
        fetch_aggregate(pool, AggregateRequest(metrics=["alt"], devices=["a"], start=start, end=T0 - timedelta(seconds=3),
                                               spec=BucketSpec("1h")))
    info = aggregates._statement.cache_info()
    assert (info.misses, info.hits) == (1, 2) and len(set(pool.statements)) == 1


def test_series_are_the_rows_regrouped_in_time_order_whatever_the_storage_order(db):
    # Newest day first on disk: array_agg takes the scan's order, fetch_series puts each series in time order.
    db.execute("INSERT INTO telemetry_rollup_1d (device_id, metric, bucket, count, sum, min, max, first_ts,"
               " first_value, last_ts, last_value) SELECT 'd' || d, m, b, d, d * k, 0, d * k, b, 0, b, 0"
               " FROM generate_series(%s::timestamptz, %s, '-1 day') WITH ORDINALITY g(b, k),"
               " generate_series(1, 3) d, unnest(ARRAY['alt', 'pitch']) m", (T0, T0 - timedelta(days=40)))
    pool = _Pool(db)
    for fleet in (False, True):
        for metrics in (["alt", "pitch"], ["pitch"]):  # one metric: series grouped by device alone
            req = AggregateRequest(metrics=metrics, devices=[], start=T0 - timedelta(days=40),
                                   end=T0 + timedelta(days=1), spec=BucketSpec("1d"), fleet=fleet)
            rows = fetch_aggregate(pool, req).rows
            series = fetch_series(pool, req).series
            assert [s[:2] for s in series] == sorted({r[1:3] for r in rows}, key=lambda k: (k[0] or "", k[1]))
            regrouped = sorted(((b, d, m, v, c) for d, m, bs, vs, cs in series
                                for b, v, c in zip(bs, vs, cs, strict=True)), key=lambda r: (r[0], r[1] or "", r[2]))
            assert regrouped == rows and len(rows) == 41 * len(metrics) * (1 if fleet else 3)
            assert all(s[2] == sorted(s[2]) for s in series)


class _Pool:
    """A pool of one connection (the test's own)."""

    def __init__(self, conn) -> None:
        self.conn = conn

    @contextmanager
    def connection(self):
        yield self.conn
