"""/telemetry/aggregate's answer: parameters -> AggregateRequest -> JSON body."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from psycopg_pool import ConnectionPool

from backend.analytics.buckets import BUCKET_NAMES, BucketSpec, zone
from backend.analytics.fill import FILLS
from backend.analytics.series import shape
from backend.api.params import Param, choice, integer, text, text_list, timestamp
from backend.api.responses import now_iso
from backend.ingest.parsing.base import MAX_DEVICE_ID_LEN, MAX_NAME_LEN
from backend.store.aggregates import AGGREGATES, AggregateRequest, fetch_aggregate
from backend.store.queries import QueryError, iso, shift

# Gap filling lists every bucket of every series: bounded so one request cannot ask for
# millions of made-up points.
MAX_FILLED_BUCKETS = 100_000
MAX_FILLED_POINTS = 1_000_000

# /telemetry/aggregate's parameters (GET /telemetry/export?kind=aggregate takes the same).
AGGREGATE_PARAMS: tuple[Param, ...] = (
    text_list("metric", max_len=MAX_NAME_LEN),  # one or several; required
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
)


def aggregate_answer(pool: ConnectionPool, p: dict[str, Any]) -> dict[str, Any]:
    metrics: list[str] = list(dict.fromkeys(p["metric"]))
    if not metrics:
        raise QueryError("metric: required (one or several, comma-separated or repeated)")
    end = p["end"] or datetime.now(UTC)
    start = p["start"] or shift(end, -timedelta(hours=24))
    if start > end:
        raise QueryError("start is after end")
    tz = p["tz"]
    z = zone(tz)
    spec = BucketSpec(p["bucket"], tz)
    fleet = p["group_by"] == "fleet"
    devices: list[str] = list(dict.fromkeys(p["device_id"]))
    filling = p["fill"] != "none"
    if filling:
        n = spec.approx_count(start, end)
        series = len(metrics) * (1 if fleet else max(1, len(devices)))
        if n > MAX_FILLED_BUCKETS or n * series > MAX_FILLED_POINTS:
            raise QueryError(f"fill: {p['fill']} over this range makes about {int(n)} {spec.name} buckets per series;"
                             f" at most {MAX_FILLED_BUCKETS} (and {MAX_FILLED_POINTS} points): narrow start..end"
                             " or choose a larger bucket")
    req = AggregateRequest(metrics=metrics, devices=devices, start=start, end=end, spec=spec, agg=p["agg"],
                           fleet=fleet, allow_rollups=p["source"] == "auto")
    result = fetch_aggregate(pool, req, with_buckets=filling)
    keys = ([(None, m) for m in metrics] if fleet else [(d, m) for d in devices for m in metrics])
    rows = ((r.bucket, r.device_id, r.metric, r.value, r.count) for r in result.rows)
    data = []
    for (device, metric), points in shape(rows, keys, result.buckets, p["fill"], p["downsample"]):
        for pt in points:
            row: dict[str, Any] = {"bucket": iso(pt.bucket)}
            if tz != "UTC":
                row["bucket_local"] = pt.bucket.astimezone(z).isoformat()
            if not fleet:
                row["device_id"] = device
            if len(metrics) > 1:  # one metric: rows as before (bucket, device_id, value, count)
                row["metric"] = metric
            row.update(value=pt.value, count=pt.count)
            data.append(row)
    data.sort(key=lambda r: (r["bucket"], r.get("device_id") or "", r.get("metric") or ""))
    return {
        "success": True, "metric": metrics[0] if len(metrics) == 1 else metrics, "metrics": metrics,
        "bucket": spec.name, "agg": req.agg, "tz": tz, "fill": p["fill"], "group_by": p["group_by"],
        "start": iso(start), "end": iso(end), "source": result.plan.source,
        "segments": [{"source": s.source, "start": iso(s.start), "end": iso(s.end)} for s in result.plan.segments],
        "data": data, "count": len(data), "timestamp": now_iso(),
    }
