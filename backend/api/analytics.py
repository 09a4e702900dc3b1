"""/telemetry/aggregate's answer (parameters -> AggregateRequest -> JSON body); downsampled raw reads."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from operator import itemgetter
from typing import Any

from psycopg_pool import ConnectionPool

from backend.analytics import cursor
from backend.analytics.buckets import BUCKET_NAMES, BucketSpec, zone
from backend.analytics.fill import FILLS
from backend.analytics.lttb import lttb_indices
from backend.analytics.rollup_choice import Plan
from backend.analytics.series import SeriesKey, shape
from backend.api.params import Param, choice, integer, text, text_list, timestamp
from backend.api.responses import now_iso
from backend.ingest.parsing.base import MAX_DEVICE_ID_LEN, MAX_NAME_LEN
from backend.store.aggregates import (
    AGGREGATES,
    AggregateRequest,
    AggregateRow,
    SeriesColumns,
    fetch_aggregate,
    fetch_series,
)
from backend.store.queries import QueryError, ReadingQuery, fetch_numeric, fetch_page, iso, shift, value_of

# Gap filling lists every bucket of every series: bounded so one request cannot ask for
# millions of made-up points.
MAX_FILLED_BUCKETS = 100_000
MAX_FILLED_POINTS = 1_000_000

# /telemetry/aggregate's parameters (GET /telemetry/export?kind=aggregate takes the same).
AGGREGATE_PARAMS: tuple[Param, ...] = (
    # One or several; required (aggregate_answer says so: the parser checks `required` of single values only,
    # the flag here is for the API description).
    dataclasses.replace(text_list("metric", max_len=MAX_NAME_LEN), required=True),
    choice("bucket", BUCKET_NAMES, "1m"),
    choice("agg", AGGREGATES, "avg"),
    timestamp("start"),
    timestamp("end"),
    text_list("device_id", max_len=MAX_DEVICE_ID_LEN),
    text("tz", "UTC", max_len=64),
    choice("fill", FILLS, "none"),
    integer("downsample", None, 2, 100_000),
    choice("group_by", ("device", "fleet"), "device"),
    choice("source", ("auto", "raw"), "auto"),  # raw: the same answer from raw rows only
    # rows: an object per point; series: arrays per (device, metric), the same points
    choice("layout", ("rows", "series"), "rows"),
)


# Years 1000..9999 in epoch seconds: there strftime's %Y has four digits.
_STRFTIME_RANGE = (-30_610_224_000, 253_402_300_799)


def _utc_label(sec: int) -> str:
    """iso() of a whole-second UTC time, by strftime (a 1,440-bucket answer spent most of its
    Python time in datetime.isoformat, cProfile)."""
    if _STRFTIME_RANGE[0] <= sec <= _STRFTIME_RANGE[1]:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(sec))
    return iso(datetime.fromtimestamp(sec, UTC))


# "THH:MM:00Z" for each minute of a day: every bucket of a minute or more starts on one.
_MINUTE_LABELS = tuple(f"T{m // 60:02d}:{m % 60:02d}:00Z" for m in range(1440))


def utc_labels(buckets: Iterable[int]) -> dict[int, str]:
    """_utc_label of each distinct bucket: its date formatted once per day, its time of day
    from a table (30 days of hours: 31 strftime calls instead of 720)."""
    days: dict[int, str] = {}
    out: dict[int, str] = {}
    for sec in set(buckets):
        if not _STRFTIME_RANGE[0] <= sec <= _STRFTIME_RANGE[1]:
            out[sec] = _utc_label(sec)
            continue
        day, rest = divmod(sec, 86400)
        d = days.get(day)
        if d is None:
            d = days[day] = time.strftime("%Y-%m-%d", time.gmtime(day * 86400))
        minute, s = divmod(rest, 60)
        out[sec] = d + (_MINUTE_LABELS[minute] if not s else time.strftime("T%H:%M:%SZ", time.gmtime(rest)))
    return out


def _plain_rows(rows: list[AggregateRow], fleet: bool, one_metric: bool) -> list[dict[str, Any]]:
    """UTC rows as SQL gave them (no fill, no downsample): one dict literal per row, no call per
    row (365 days of 100 devices is 36,600 rows; a function per row cost more than the JSON)."""
    lab = utc_labels(map(itemgetter(0), rows))
    if fleet and one_metric:
        return [{"bucket": lab[b], "value": v, "count": c} for b, _, _, v, c in rows]
    if fleet:
        return [{"bucket": lab[b], "metric": m, "value": v, "count": c} for b, _, m, v, c in rows]
    if one_metric:
        return [{"bucket": lab[b], "device_id": d, "value": v, "count": c} for b, d, _, v, c in rows]
    return [{"bucket": lab[b], "device_id": d, "metric": m, "value": v, "count": c} for b, d, m, v, c in rows]


def _request(p: dict[str, Any]) -> AggregateRequest:
    """The request's parameters checked against each other (each alone is checked by api/params)."""
    metrics: list[str] = list(dict.fromkeys(p["metric"]))
    if not metrics:
        raise QueryError("metric: required (one or several, comma-separated or repeated)")
    end = p["end"] or datetime.now(UTC)
    start = p["start"] or shift(end, -timedelta(hours=24))
    if start > end:
        raise QueryError("start is after end")
    spec = BucketSpec(p["bucket"], p["tz"])
    fleet = p["group_by"] == "fleet"
    devices: list[str] = list(dict.fromkeys(p["device_id"]))
    if p["fill"] != "none":
        n = spec.approx_count(start, end)
        series = len(metrics) * (1 if fleet else max(1, len(devices)))
        if n > MAX_FILLED_BUCKETS or n * series > MAX_FILLED_POINTS:
            raise QueryError(f"fill: {p['fill']} over this range makes about {int(n)} {spec.name} buckets per series;"
                             f" at most {MAX_FILLED_BUCKETS} (and {MAX_FILLED_POINTS} points): narrow start..end"
                             " or choose a larger bucket")
    return AggregateRequest(metrics=metrics, devices=devices, start=start, end=end, spec=spec, agg=p["agg"],
                            fleet=fleet, allow_rollups=p["source"] == "auto")


class _Labels:
    """Each distinct bucket's labels, formatted once: UTC, and local when tz is not UTC."""

    def __init__(self, tz: str) -> None:
        self.zone = zone(tz) if tz != "UTC" else None
        self._done: dict[int, tuple[str, str]] = {}

    def __call__(self, bucket: int) -> tuple[str, str]:
        label = self._done.get(bucket)
        if label is None:
            local = datetime.fromtimestamp(bucket, self.zone).isoformat() if self.zone is not None else ""
            label = self._done[bucket] = (_utc_label(bucket), local)
        return label


def _series_keys(req: AggregateRequest) -> list[SeriesKey]:
    """The series shown even without rows when filling: every device and metric asked for."""
    if req.fleet:
        return [(None, m) for m in req.metrics]
    return [(d, m) for d in req.devices for m in req.metrics]


def _rows(pool: ConnectionPool, req: AggregateRequest, p: dict[str, Any]) -> tuple[Plan, list[dict[str, Any]]]:
    """layout=rows: one object per (bucket, series), by bucket, device, metric."""
    filling, local, one_metric = p["fill"] != "none", p["tz"] != "UTC", len(req.metrics) == 1
    result = fetch_aggregate(pool, req, with_buckets=filling)
    if not filling and p["downsample"] is None and not local:
        return result.plan, _plain_rows(result.rows, req.fleet, one_metric)  # in (bucket, device, metric) order from SQL
    labels = _Labels(p["tz"])

    def row(bucket: int, device: str | None, metric: str, value: float | None, count: int) -> dict[str, Any]:
        utc, there = labels(bucket)
        out: dict[str, Any] = {"bucket": utc}
        if local:
            out["bucket_local"] = there
        if not req.fleet:
            out["device_id"] = device
        if not one_metric:  # one metric: rows as before (bucket, device_id, value, count)
            out["metric"] = metric
        out["value"] = value
        out["count"] = count
        return out

    if not filling and p["downsample"] is None:
        return result.plan, [row(*r) for r in result.rows]
    data = [row(pt.bucket, device, metric, pt.value, pt.count)
            for (device, metric), points in shape(result.rows, _series_keys(req), result.buckets, p["fill"],
                                                  p["downsample"])
            for pt in points]
    data.sort(key=lambda r: (r["bucket"], r.get("device_id") or "", r.get("metric") or ""))
    return result.plan, data


def _series(pool: ConnectionPool, req: AggregateRequest, p: dict[str, Any]) -> tuple[Plan, list[dict[str, Any]]]:
    """layout=series: one object per (device, metric) with its buckets, values and counts as arrays.

    The same points as layout=rows, regrouped. Without fill or downsample PostgreSQL groups
    them (fetch_series: no sort, a row per series); otherwise they come from shape().
    """
    columns: list[SeriesColumns]
    if p["fill"] == "none" and p["downsample"] is None:
        result = fetch_series(pool, req)
        plan_, columns = result.plan, result.series
    else:
        rows = fetch_aggregate(pool, req, with_buckets=p["fill"] != "none")
        plan_ = rows.plan
        columns = [(d, m, [pt.bucket for pt in pts], [pt.value for pt in pts], [pt.count for pt in pts])
                   for (d, m), pts in shape(rows.rows, _series_keys(req), rows.buckets, p["fill"], p["downsample"])]
    labels = _Labels(p["tz"])
    # Series usually share their buckets: their label lists are made once and shared.
    last: tuple[list[int] | None, list[str], list[str]] = (None, [], [])
    out = []
    for device, metric, buckets, values, counts in columns:
        one: dict[str, Any] = {} if req.fleet else {"device_id": device}
        one["metric"] = metric
        if buckets != last[0]:
            both = list(map(labels, buckets))
            last = (buckets, [u for u, _ in both], [t for _, t in both])
        one["buckets"] = last[1]
        if labels.zone is not None:
            one["buckets_local"] = last[2]
        one["values"] = values
        one["counts"] = counts
        out.append(one)
    return plan_, out


def aggregate_answer(pool: ConnectionPool, p: dict[str, Any]) -> dict[str, Any]:
    req = _request(p)
    if p["layout"] == "series":
        plan_, series = _series(pool, req, p)
        points: dict[str, Any] = {"series": series, "count": sum(len(s["buckets"]) for s in series)}
    else:
        plan_, data = _rows(pool, req, p)
        points = {"data": data, "count": len(data)}
    return {
        "success": True, "metric": req.metrics[0] if len(req.metrics) == 1 else req.metrics, "metrics": req.metrics,
        "bucket": req.spec.name, "agg": req.agg, "tz": p["tz"], "fill": p["fill"], "group_by": p["group_by"],
        "layout": p["layout"], "start": iso(req.start), "end": iso(req.end), "source": plan_.source,
        "segments": [{"source": s.source, "start": iso(s.start), "end": iso(s.end)} for s in plan_.segments],
        **points, "timestamp": now_iso(),
    }


# Downsampling reads every raw reading of the range: bounded, past that /telemetry/aggregate
# (with downsample) is the way, as it reads rollups.
MAX_DOWNSAMPLE_ROWS = 500_000


def downsampled_readings(pool: ConnectionPool, q: ReadingQuery, n: int) -> list[dict[str, Any]]:
    """At most n readings per (device, metric) keeping the shape (LTTB), by series then time."""
    rows = fetch_numeric(pool, q, MAX_DOWNSAMPLE_ROWS)
    if len(rows) > MAX_DOWNSAMPLE_ROWS:
        raise QueryError(f"downsample: the range holds more than {MAX_DOWNSAMPLE_ROWS} readings; narrow"
                         " start..end, or use /telemetry/aggregate with downsample (it reads the rollups)")
    out: list[dict[str, Any]] = []
    i = 0
    while i < len(rows):
        j = i
        while j < len(rows) and rows[j][:2] == rows[i][:2]:
            j += 1
        series = rows[i:j]
        xs = [r[2].timestamp() for r in series]
        ys = [r[3] for r in series]
        for k in lttb_indices(xs, ys, n):
            d, m, t, v, rec = series[k]
            out.append({"device_id": d, "metric": m, "ts": iso(t), "value": value_of(v, None), "created_at": iso(rec)})
        i = j
    return out


def check_downsample(p: dict[str, Any]) -> None:
    for name in ("next", "offset"):
        if p[name]:
            raise QueryError(f"{name}: not with downsample (a downsampled read is one answer for the whole range)")
    if p["format"] != "narrow":
        raise QueryError("downsample: only with format=narrow")


def _fingerprint(p: dict[str, Any], q: ReadingQuery) -> str:
    """What a cursor belongs to: the filters and order as the client gave them."""
    return cursor.fingerprint([sorted(q.device_ids), sorted(q.metrics), p["start"], p["end"], p["hours"],
                               q.order_by, q.desc])


def narrow_page(pool: ConnectionPool, q: ReadingQuery, p: dict[str, Any]) -> tuple[list[dict[str, Any]], str | None]:
    """A narrow page (after `next` when given) and the cursor of the page after it (None: last page)."""
    fp = _fingerprint(p, q)
    if p["next"]:
        if q.offset:
            raise QueryError("offset: not with next (the cursor is the position)")
        q.after = cursor.decode(p["next"], fp, q.key_kinds())
    data, last = fetch_page(pool, q)
    return data, (cursor.encode(fp, last) if last is not None else None)
