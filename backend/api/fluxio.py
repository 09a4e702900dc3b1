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

import orjson
from flask import Blueprint, Response, request
from psycopg import sql

from ..fleet.auth import PUBLIC, requires
from ..query import QueryError, ReadingQuery, fetch_wide, parse_int, parse_time_param
from ..services import services
from .responses import error_response, json_response, now_iso
from .telemetry import run_ingest

bp = Blueprint("fluxio", __name__)

FLOW_FIELDS = ("flow_rate", "totalizer", "temperature", "pressure", "battery_level", "signal_strength")
SEED002_DEVICE = "default"  # seed 002's producer names no device
MAX_SERIES_POINTS = 200_000


def _augment(resp: Response, **extra: Any) -> Response:
    """Add seed-specific keys to a successful ingest answer."""
    if resp.status_code not in (200, 207):
        return resp
    body = orjson.loads(resp.get_data())
    body.update(extra)
    resp.set_data(orjson.dumps(body))
    return resp


@bp.post("/api/ingest")
@requires("ingest")
def fluxio_ingest() -> Response:
    return _augment(run_ingest(fmt="json"), message="Data ingested successfully")


@bp.get("/api/ingest")
@requires(PUBLIC)
def fluxio_ingest_health() -> Response:
    # FluxIO gateways probe the ingest URL with a GET; it reveals nothing.
    return json_response({"status": "ok", "service": "telemetry ingest API", "timestamp": now_iso()})


@bp.get("/api/flow-data")
@requires("read")
def flow_data() -> Response:
    args = request.args
    try:
        device = args.get("device_id")
        q = ReadingQuery(
            device_ids=[device] if device else [],
            metrics=[],
            start=parse_time_param("start_time", args.get("start_time") or args.get("start")),
            end=parse_time_param("end_time", args.get("end_time") or args.get("end")),
            limit=parse_int("limit", args.get("limit"), 1000, 1, 10_000),
        )
        if q.end is not None:
            q.end = q.end + timedelta(microseconds=1)  # FluxIO's end_time is inclusive
        rows = fetch_wide(services().pool, q)
    except QueryError as exc:
        return error_response(400, str(exc))
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
def seed002_ingest() -> Response:
    return _augment(run_ingest(fmt="json", default_device_id=SEED002_DEVICE), status="success")


@bp.get("/api/telemetry")
@requires("read")
def seed002_series() -> Response:
    args = request.args
    try:
        hours = float(args.get("hours") or 1)
        if not 0 < hours <= 24 * 366:
            raise ValueError
    except ValueError:
        return error_response(400, "hours: a positive number of hours")
    try:
        limit = parse_int("limit", args.get("limit"), MAX_SERIES_POINTS, 1, MAX_SERIES_POINTS)
    except QueryError as exc:
        return error_response(400, str(exc))
    since = datetime.now(UTC) - timedelta(hours=hours)
    device = args.get("device_id")
    signals = [s for v in args.getlist("signal") for s in v.split(",") if s]
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
        out.setdefault(metric, []).append({"timestamp": ts.isoformat().replace("+00:00", "Z"), "value": value})
    return json_response(out)


@bp.get("/api/signals")
@requires("read")
def seed002_signals() -> Response:
    device = request.args.get("device_id")
    with services().pool.connection() as conn:
        if device:
            rows = conn.execute("SELECT metric FROM device_latest WHERE device_id = %s ORDER BY metric",
                                (device,)).fetchall()
        else:
            rows = conn.execute("SELECT DISTINCT metric FROM device_latest ORDER BY metric").fetchall()
    return json_response([r[0] for r in rows])
