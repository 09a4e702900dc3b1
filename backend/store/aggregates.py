"""Bucketed aggregates over rollups and raw rows (SQL for backend/analytics' plans).

One statement per request: each segment of the plan (backend/analytics/rollup_choice.py)
reads its own source over its own part of the range, all as rows of one shape (count, sum,
min, max, first and last with their times), UNION ALL, grouped by output bucket. A raw
reading is such a row with count 1. Rollups are folded after the commit (migrations/0052):
each rollup segment adds the readings of its range not folded yet (the tail, `telemetry_unrolled`),
read in the same statement, so in the same snapshot as the cursor that says which those are:
an answer never lags the raw rows and never counts a reading twice. A segment whose rollup
grain is the bucket itself is not grouped where the tail has nothing in a bucket
(_direct_segment). The statement is sent alone, in autocommit: one round trip (see
_statement for how it stays serial).

Calendar buckets (day/week/month) are date_trunc(unit, t, zone): truncated in local time and
turned back into an instant, so they follow local midnight, DST included; the bucket list
for gap filling steps through local time the same way (no session TimeZone to set).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime, timedelta
from operator import itemgetter
from typing import Any

from psycopg_pool import ConnectionPool

from backend.analytics.buckets import EPOCH_2000, BucketSpec
from backend.analytics.rollup_choice import GRAINS, RAW, Plan, plan

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
# The same aggregates over exactly one rollup row (see _direct_segment); the same types too.
_ONE_ROW = {"count": "count", "sum": "sum", "avg": "sum / count", "min": "min", "max": "max",
            "first": "first_value", "last": "last_value"}
GRAIN_SECONDS = {name: seconds for seconds, name in GRAINS}
_MINUTE = timedelta(minutes=1)


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


# (bucket start in epoch seconds, device_id or None fleet-wide, metric, value, count). Plain
# tuples and integer buckets: an answer can have 36,500 rows (a year of days for 100
# devices), and parsing a timestamptz and hashing an aware datetime per row cost more than
# the query (cProfile). Every bucket starts on a whole second (date_bin from 2000-01-01 by
# whole seconds, or date_trunc of a day/week/month, in zones whose offsets are whole seconds).
AggregateRow = tuple[int, str | None, str, float | None, int]


@dataclass(frozen=True)
class AggregateResult:
    plan: Plan
    rows: list[AggregateRow]
    buckets: list[int] | None  # every bucket start of the range (epoch seconds), when asked for


def _filter(column: str, n: int, name: str) -> str:
    """` AND column = %(name)s` for one value, `= ANY(...)` for several (n: how many; 0: none)."""
    if n == 0:
        return ""
    return f" AND {column} = %({name})s" if n == 1 else f" AND {column} = ANY(%({name})s)"


def _bucket_expr(spec: BucketSpec) -> str:
    if spec.calendar and spec.is_utc and spec.calendar != "month":
        # The same buckets without a zone looked up per row (EXPLAIN ANALYZE, 365 days across
        # 100 devices: half the query's time went to date_trunc(..., 'UTC')); 2000-01-03 is a Monday.
        if spec.calendar == "day":
            return "date_bin('1 day'::interval, t, '2000-01-01 00:00:00+00'::timestamptz)"
        return "date_bin('7 days'::interval, t, '2000-01-03 00:00:00+00'::timestamptz)"
    if spec.calendar:
        return f"date_trunc('{spec.calendar}', t, %(tz)s)"
    return "date_bin(%(step)s::interval, t, TIMESTAMPTZ '2000-01-01 00:00:00+00')"


# What a statement's text depends on (its values go in as parameters): the sources of the
# plan's segments, how many metrics and devices are filtered on (0, 1, several), fleet or
# per device, the aggregate, the bucket expression, which segment is read row for row
# (-1: none) and which raw segments take their devices from the minute's rollup.
_Shape = tuple[tuple[str, ...], int, int, bool, str, str, int, tuple[bool, ...]]


@functools.lru_cache(maxsize=512)
def _statement(shape: _Shape, by_series: bool = False) -> str:
    """The SQL of one shape, composed once: composing it per request cost more CPU than parsing its rows.

    by_series: one row per series (device or NULL, metric, then arrays of bucket, value and count),
    grouped by PostgreSQL; the caller orders each series' points. A year of days for 100 devices
    is 100 rows instead of 36,600: the sort by bucket and device and the conversion of each row go.
    """
    sources, n_metrics, n_devices, fleet, agg, bexpr, direct, edge_devices = shape
    metric = _filter("metric", n_metrics, "metric")
    device = _filter("device_id", n_devices, "device")
    grouped, rowwise = [], ""
    tail = any(s != RAW for s in sources)
    series = ("NULL::text" if fleet else "device_id") + ", metric"
    for i, source in enumerate(sources):
        rng = f" >= %(lo{i})s AND {{0}} < %(hi{i})s"
        if source == RAW:
            seg = (f"SELECT {_RAW_ROW} FROM telemetry_readings WHERE value IS NOT NULL AND ts" + rng.format("ts")
                   + metric + device)
            if edge_devices[i]:
                # Without a device filter the only index on ts is BRIN, of no use where rows are
                # not stored in time order (a backfill; bench/analytics.py's data: a seq scan of a
                # month, 52 ms, for an edge of seconds). A raw segment of a rollup plan lies within
                # one minute, and the devices with readings in it are the ones with a row in that
                # minute's rollup, or in the tail not folded yet: the key (device_id, metric, ts) serves.
                seg += (f" AND device_id = ANY(ARRAY(SELECT device_id FROM telemetry_rollup_1m"
                        f" WHERE bucket = %(minute{i})s{metric} UNION SELECT device_id FROM tail"
                        f" WHERE ts >= %(minute{i})s AND ts < %(minute{i})s + interval '1 minute'))")
            grouped.append(seg)
            continue
        rows = f"SELECT {_ROLLUP_ROW} FROM telemetry_{source} r WHERE bucket" + rng.format("bucket") + metric + device
        if i == direct:
            # One rollup row per output bucket, and no other segment in its buckets: no GROUP BY,
            # except for the buckets the tail adds readings to (grouped with theirs below).
            touched = (" EXISTS (SELECT 1 FROM tail k WHERE k.device_id = r.device_id AND k.metric = r.metric"
                       f" AND k.ts >= r.bucket AND k.ts < r.bucket + interval '{GRAIN_SECONDS[source]} seconds')")
            rowwise = (f"SELECT date_part('epoch', bucket)::bigint, {series}, {_ONE_ROW[agg]}, count"
                       f" FROM telemetry_{source} r WHERE bucket" + rng.format("bucket") + metric + device
                       + " AND NOT" + touched)
            # Its keys in the tail drive this arm: an empty tail (the usual case) reads nothing here.
            rows += (" AND (r.device_id, r.metric, r.bucket) IN (SELECT k.device_id, k.metric,"
                     f" date_bin(interval '{GRAIN_SECONDS[source]} seconds', k.ts, TIMESTAMPTZ '2000-01-01 00:00:00+00')"
                     " FROM tail k)")
        grouped.append(rows)
        grouped.append(f"SELECT {_RAW_ROW} FROM tail WHERE ts" + rng.format("ts"))
    # A rollup plan's reads are small: parallel workers cost more than they save (365 days
    # across 100 devices: p50 43 -> 25 ms fleet-wide, 217 -> 156 ms per device, on a busy
    # machine). telemetry_serial_plan() (migrations/0051) keeps the whole statement serial.
    serial = " WHERE telemetry_serial_plan()" if any(s != RAW for s in sources) else ""
    parts = []
    if grouped:
        keys = "metric" if fleet else "device_id, metric"
        parts.append(f"SELECT date_part('epoch', {bexpr})::bigint AS b, {series}, {_AGG[agg]}, sum(count)::bigint FROM (" + " UNION ALL ".join(grouped)
                     + f") s{serial} GROUP BY 1, {keys}")
        serial = ""
    if rowwise:
        parts.append(rowwise + serial.replace(" WHERE ", " AND "))
    with_tail = (f"WITH tail AS MATERIALIZED (SELECT device_id, metric, ts, value FROM telemetry_unrolled"
                 f" WHERE true{metric}{device}) ") if tail else ""
    body = " UNION ALL ".join(parts)
    if by_series:
        # One metric: every row has it, so a series is a device. Grouped by that one column (no
        # statistics: 200 groups estimated) PostgreSQL hashes; by two it estimates a tenth of the
        # rows and sorts them all first (a year of days for 100 devices: 35 against 24-26 ms).
        metric_col, keys = ("%(metric)s::text", "1") if n_metrics == 1 else ("s.m", "1, 2")
        return (with_tail + f"SELECT s.d, {metric_col}, array_agg(s.b), array_agg(s.v), array_agg(s.c) FROM ("
                + body + f") s(b, d, m, v, c) GROUP BY {keys}")
    return with_tail + body + " ORDER BY 1, 2, 3"


def _direct_segment(req: AggregateRequest, p: Plan) -> int:
    """Which segment holds exactly one row per output bucket and series (-1: none).

    The coarsest segment's grain equals the bucket: each of its rollup rows is one output
    bucket, and the other segments (the ragged edges) lie in other buckets, as the coarsest
    segment starts and ends on a bucket boundary. Fleet-wide buckets add up devices: no.
    """
    if req.fleet or not p.segments:
        return -1
    bucket_s = req.spec.seconds if req.spec.seconds is not None else (86400 if req.spec.calendar == "day" else 0)
    for i, s in enumerate(p.segments):
        if s.source != RAW and s.source == p.source and GRAIN_SECONDS[s.source] == bucket_s:
            return i
    return -1


def _minute(ts: datetime) -> datetime:
    return EPOCH_2000 + (ts - EPOCH_2000) // _MINUTE * _MINUTE


def bucket_list(spec: BucketSpec, start: datetime, end: datetime, conn: Any = None) -> list[int]:
    """Start (epoch s) of every bucket that [start, end) touches (fixed: in Python; calendar: by PostgreSQL)."""
    if start >= end:
        return []
    if spec.seconds is not None:
        step = timedelta(seconds=spec.seconds)
        first = EPOCH_2000 + (start - EPOCH_2000) // step * step
        origin = int(EPOCH_2000.timestamp())
        b0 = origin + (first - EPOCH_2000) // timedelta(seconds=1)
        n = -(-(end - first) // step)
        return [b0 + i * spec.seconds for i in range(n)]
    rows = conn.execute(
        "SELECT date_part('epoch', b)::bigint FROM generate_series(date_trunc(%s, %s::timestamptz AT TIME ZONE %s), %s::timestamptz AT TIME ZONE %s,"
        " %s::interval) g, LATERAL (SELECT g AT TIME ZONE %s AS b) x WHERE b < %s",
        [spec.calendar, start, spec.tz, end, spec.tz, "1 " + (spec.calendar or "day"), spec.tz, end]).fetchall()
    return [r[0] for r in rows]


def _prepared(req: AggregateRequest) -> tuple[Plan, dict[str, Any], _Shape]:
    """The plan of a request, its statement's parameters and its shape (the statement's text)."""
    p = plan(req.spec, req.start, req.end, req.allow_rollups)
    rollups = p.source != RAW
    params: dict[str, Any] = {"metric": req.metrics[0] if len(req.metrics) == 1 else req.metrics,
                              "device": req.devices[0] if len(req.devices) == 1 else req.devices}
    if req.spec.calendar:
        params["tz"] = req.spec.tz
    else:
        params["step"] = timedelta(seconds=req.spec.seconds or 60)
    edge_devices = []
    for i, s in enumerate(p.segments):
        params[f"lo{i}"], params[f"hi{i}"] = s.start, s.end
        minute = _minute(s.start)
        edge = rollups and s.source == RAW and not req.devices and s.end - minute <= _MINUTE  # no overflow at 9999-12-31
        if edge:
            params[f"minute{i}"] = minute
        edge_devices.append(edge)
    shape: _Shape = (tuple(s.source for s in p.segments), min(len(req.metrics), 2), min(len(req.devices), 2),
                     req.fleet, req.agg, _bucket_expr(req.spec), _direct_segment(req, p), tuple(edge_devices))
    return p, params, shape


def fetch_aggregate(pool: ConnectionPool, req: AggregateRequest, with_buckets: bool = False) -> AggregateResult:
    p, params, shape = _prepared(req)
    rows: list[tuple] = []
    buckets = None
    # One statement, one round trip: no transaction around it (see _statement for the plan).
    # Binary results: psycopg parses them in half the CPU of text (36,600 rows: 32 -> 15 ms).
    with pool.connection() as conn:
        if p.segments:
            rows = conn.cursor(binary=True).execute(_statement(shape), params).fetchall()
        if with_buckets:
            buckets = bucket_list(req.spec, req.start, req.end, conn)
    return AggregateResult(p, rows, buckets)


# One series of an aggregate, column by column: (device_id or None fleet-wide, metric, bucket
# starts in epoch seconds ascending, values, counts).
SeriesColumns = tuple[str | None, str, list[int], list[float | None], list[int]]


@dataclass(frozen=True)
class SeriesResult:
    plan: Plan
    series: list[SeriesColumns]  # by (device_id, metric)


def fetch_series(pool: ConnectionPool, req: AggregateRequest) -> SeriesResult:
    """The same aggregate as fetch_aggregate, as columns per series (the rows regrouped)."""
    p, params, shape = _prepared(req)
    if not p.segments:
        return SeriesResult(p, [])
    with pool.connection() as conn:
        rows = conn.cursor(binary=True).execute(_statement(shape, by_series=True), params).fetchall()
    out: list[SeriesColumns] = []
    for device, metric, buckets, values, counts in rows:
        # array_agg keeps the order its input came in (the edge segments first, then the scans),
        # which is not time order. Reordered in C (itemgetter): per element in Python it took a
        # third of the per-device year's worker time (py-spy).
        order = sorted(range(len(buckets)), key=buckets.__getitem__)
        if len(order) > 1:
            pick = itemgetter(*order)
            buckets, values, counts = list(pick(buckets)), list(pick(values)), list(pick(counts))
        out.append((device, metric, buckets, values, counts))
    out.sort(key=lambda s: (s[0] or "", s[1]))
    return SeriesResult(p, out)
