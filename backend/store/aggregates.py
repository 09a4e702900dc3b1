"""Bucketed aggregates over rollups and raw rows (SQL for backend/analytics' plans).

One statement per request: each segment of the plan (backend/analytics/rollup_choice.py)
reads its own source over its own part of the range, all as rows of one shape (count, sum,
min, max, first and last with their times), UNION ALL, grouped by output bucket. A raw
reading is such a row with count 1. Rollups are kept in the writing transaction
(migrations/0020), so there is no tail of raw rows not rolled up yet to add.

Calendar buckets (day/week/month) are date_trunc(unit, t, zone): truncated in local time and
turned back into an instant, so they follow local midnight, DST included; the bucket list
for gap filling steps through local time the same way. One round trip per answer (no
transaction, no session settings): on a busy machine each round trip costs a wake-up.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from psycopg import sql
from psycopg_pool import ConnectionPool

from backend.analytics.buckets import EPOCH_2000, BucketSpec
from backend.analytics.rollup_choice import RAW, Plan, plan

_RAW_ROW = ("device_id, metric, ts AS t, 1::bigint AS count, value AS sum, value AS min, value AS max,"
            " ts AS first_ts, value AS first_value, ts AS last_ts, value AS last_value")
_ROLLUP_ROW = "device_id, metric, bucket AS t, count, sum, min, max, first_ts, first_value, last_ts, last_value"
# Ties between devices at the same time (fleet-wide first/last) break by device_id, the same
# way for raw rows and rollup rows.
_AGG = {
    "count": "sum(count)::bigint",
    "sum": "sum(sum)",
    "avg": "sum(sum) / sum(count)",
    "min": "min(min)",
    "max": "max(max)",
    "first": "(array_agg(first_value ORDER BY first_ts, device_id))[1]",
    "last": "(array_agg(last_value ORDER BY last_ts DESC, device_id DESC))[1]",
}
AGGREGATES = tuple(_AGG)


@dataclass(frozen=True)
class AggregateRequest:
    metrics: list[str]
    devices: list[str]
    start: datetime
    end: datetime
    spec: BucketSpec
    agg: str = "avg"
    fleet: bool = False  # one series per metric across devices instead of one per device
    allow_rollups: bool = True


@dataclass(frozen=True)
class AggregateRow:
    bucket: datetime
    device_id: str | None
    metric: str
    value: float | None
    count: int


@dataclass(frozen=True)
class AggregateResult:
    plan: Plan
    rows: list[AggregateRow]
    buckets: list[datetime] | None  # every bucket start of the range, when asked for


def _filter(column: str, values: list[str], params: list[Any]) -> sql.Composable:
    if len(values) == 1:
        params.append(values[0])
        return sql.SQL(" AND {} = %s").format(sql.Identifier(column))
    params.append(values)
    return sql.SQL(" AND {} = ANY(%s)").format(sql.Identifier(column))


def _segment_sql(source: str, req: AggregateRequest, lo: datetime, hi: datetime,
                 params: list[Any]) -> sql.Composable:
    if source == RAW:
        head = sql.SQL("SELECT " + _RAW_ROW + " FROM telemetry_readings WHERE value IS NOT NULL AND ts >= %s"
                       " AND ts < %s")
    else:
        table = sql.Identifier("telemetry_" + source)
        head = sql.SQL("SELECT " + _ROLLUP_ROW + " FROM {} WHERE bucket >= %s AND bucket < %s").format(table)
    params += [lo, hi]
    stmt = head + _filter("metric", req.metrics, params)
    if req.devices:
        stmt += _filter("device_id", req.devices, params)
    return stmt


def _bucket_expr(spec: BucketSpec, params: list[Any]) -> sql.Composable:
    if spec.calendar:
        params.append(spec.tz)
        return sql.SQL("date_trunc({}, t, %s)").format(sql.Literal(spec.calendar))
    params.append(timedelta(seconds=spec.seconds or 60))
    return sql.SQL("date_bin(%s::interval, t, TIMESTAMPTZ '2000-01-01 00:00:00+00')")


def bucket_list(spec: BucketSpec, start: datetime, end: datetime, conn: Any = None) -> list[datetime]:
    """Start of every bucket that [start, end) touches (fixed: in Python; calendar: by PostgreSQL)."""
    if start >= end:
        return []
    if spec.seconds is not None:
        step = timedelta(seconds=spec.seconds)
        first = EPOCH_2000 + (start - EPOCH_2000) // step * step
        out = []
        b = first
        while b < end:
            out.append(b)
            b += step
        return out
    rows = conn.execute(
        "SELECT b FROM generate_series(date_trunc(%s, %s::timestamptz AT TIME ZONE %s), %s::timestamptz AT TIME ZONE %s,"
        " %s::interval) g, LATERAL (SELECT g AT TIME ZONE %s AS b) x WHERE b < %s",
        [spec.calendar, start, spec.tz, end, spec.tz, "1 " + (spec.calendar or "day"), spec.tz, end]).fetchall()
    return [r[0] for r in rows]


def fetch_aggregate(pool: ConnectionPool, req: AggregateRequest, with_buckets: bool = False) -> AggregateResult:
    p = plan(req.spec, req.start, req.end, req.allow_rollups)
    params: list[Any] = []
    bexpr = _bucket_expr(req.spec, params)
    parts = [_segment_sql(s.source, req, s.start, s.end, params) for s in p.segments]
    keys = "metric" if req.fleet else "device_id, metric"
    stmt = (sql.SQL("SELECT ") + bexpr + sql.SQL(" AS b, " + ("NULL::text" if req.fleet else "device_id")
                                                 + ", metric, " + _AGG[req.agg] + ", sum(count)::bigint FROM (")
            + sql.SQL(" UNION ALL ").join(parts)
            + sql.SQL(") s GROUP BY 1, " + keys + " ORDER BY 1, 2, 3"))
    rows: list[tuple] = []
    buckets = None
    with pool.connection() as conn:
        if parts:
            rows = conn.execute(stmt, params).fetchall()
        if with_buckets:
            buckets = bucket_list(req.spec, req.start, req.end, conn)
    return AggregateResult(p, [AggregateRow(b, d, m, v, c) for b, d, m, v, c in rows], buckets)
