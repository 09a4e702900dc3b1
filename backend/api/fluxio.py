"""Seed compatibility: FluxIO's gateway and dashboard API (seed 004) and seed 002's producer API.

- `POST /api/ingest` (x-api-key): FluxIO gateway JSON, one object or an array,
  `{device_id, flow_rate, totalizer, temperature, status, timestamp?, ...}`; stored through
  the same path as every other ingest endpoint (run_ingest, format json).
- `GET /api/flow-data?device_id&start_time&end_time&limit`: one record per device and
  measurement time, shaped like FluxIO's flow_data rows (created_at = measurement time).
- `POST /api/telemetry {timestamp, signals}`, `GET /api/telemetry?hours=1` and
  `GET /api/signals`: seed 002's producer and chart.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Blueprint, Response
from psycopg import sql

from backend.api.ingest_http import INGEST_PARAMS, run_ingest
from backend.api.params import accepts, integer, number, text, text_list, timestamp
from backend.api.responses import json_response, now_iso
from backend.fleet.auth import PUBLIC, requires
from backend.ingest.parsing.base import MAX_DEVICE_ID_LEN, MAX_NAME_LEN
from backend.services import services
from backend.store.queries import ReadingQuery, fetch_wide, hours_before, iso, shift

bp = Blueprint("fluxio", __name__)

FLOW_FIELDS = ("flow_rate", "totalizer", "temperature", "pressure", "battery_level", "signal_strength")
SEED002_DEVICE = "default"  # seed 002's producer names no device
MAX_SERIES_POINTS = 200_000


@bp.post("/api/ingest")
@requires("ingest")
@accepts(*INGEST_PARAMS)
def fluxio_ingest(p: dict[str, Any]) -> Response:
    return run_ingest(p, fmt="json", extra={"message": "Data ingested successfully"})


@bp.get("/api/ingest")
@requires(PUBLIC)
@accepts()
def fluxio_ingest_health(_p: dict[str, Any]) -> Response:
    # FluxIO gateways probe the ingest URL with a GET; it reveals nothing.
    return json_response({"status": "ok", "service": "telemetry ingest API", "timestamp": now_iso()})


@bp.get("/api/flow-data")
@requires("read")
@accepts(
    text("device_id", max_len=MAX_DEVICE_ID_LEN),
    timestamp("start_time", aliases=("start",)),
    timestamp("end_time", aliases=("end",)),
    integer("limit", 1000, 1, 10_000),
)
def flow_data(p: dict[str, Any]) -> Response:
    end = p["end_time"]
    q = ReadingQuery(
        device_ids=[p["device_id"]] if p["device_id"] else [],
        metrics=[],
        start=p["start_time"],
        # FluxIO's end_time is inclusive
        end=shift(end, timedelta(microseconds=1)) if end is not None else None,
        limit=p["limit"],
    )
    rows = fetch_wide(services().pool, q)
    data = []
    for rec in rows:
        ts = rec.pop("ts")
        received = rec.pop("created_at")
        row: dict[str, Any] = {"id": f"{rec['device_id']}@{ts}", "device_id": rec.pop("device_id")}
        for f in FLOW_FIELDS:
            row[f] = rec.pop(f, None)
        row.update(rec)  # any other metric the gateway sent
        row["created_at"] = ts
        row["timestamp"] = ts
        row["received_at"] = received
        data.append(row)
    return json_response({"success": True, "data": data, "count": len(data), "timestamp": now_iso()},
                         headers={"Cache-Control": "no-store"})


@bp.post("/api/telemetry")
@requires("ingest")
@accepts(*INGEST_PARAMS)
def seed002_ingest(p: dict[str, Any]) -> Response:
    return run_ingest(p, fmt="json", default_device_id=SEED002_DEVICE, extra={"status": "success"})


@bp.get("/api/telemetry")
@requires("read")
@accepts(
    number("hours", 1.0, gt=0, le=24 * 366, what="a positive number of hours"),
    integer("limit", MAX_SERIES_POINTS, 1, MAX_SERIES_POINTS),
    text("device_id", max_len=MAX_DEVICE_ID_LEN),
    text_list("signal", max_len=MAX_NAME_LEN),
)
def seed002_series(p: dict[str, Any]) -> Response:
    limit = p["limit"]
    since = hours_before(datetime.now(UTC), p["hours"])
    device = p["device_id"]
    signals = p["signal"]
    if device:  # series by series from the unique key (backend/query.py)
        q = ReadingQuery(device_ids=[device], metrics=signals, start=since, end=None, limit=limit, desc=False,
                         numeric_only=True)
        stmt, params = q.series("metric, ts, value")
        stmt += sql.SQL(" ORDER BY ts, metric LIMIT %s")
        params.append(limit)
    else:
        where = "ts >= %s AND value IS NOT NULL"
        params = [since]
        if signals:
            where += " AND metric = ANY(%s)"
            params.append(signals)
        stmt = sql.SQL("SELECT metric, ts, value FROM telemetry_readings WHERE " + where
                       + " ORDER BY ts, metric LIMIT %s")
        params.append(limit)
    with services().pool.connection() as conn:
        rows = conn.execute(stmt, params).fetchall()
    out: dict[str, list[dict[str, Any]]] = {}
    for metric, ts, value in rows:
        out.setdefault(metric, []).append({"timestamp": iso(ts), "value": value})
    return json_response(out)


@bp.get("/api/signals")
@requires("read")
@accepts(text("device_id", max_len=MAX_DEVICE_ID_LEN))
def seed002_signals(p: dict[str, Any]) -> Response:
    device = p["device_id"]
    with services().pool.connection() as conn:
        if device:
            rows = conn.execute("SELECT metric FROM device_latest WHERE device_id = %s ORDER BY metric",
                                (device,)).fetchall()
        else:
            rows = conn.execute("SELECT DISTINCT metric FROM device_latest ORDER BY metric").fetchall()
    return json_response([r[0] for r in rows])
