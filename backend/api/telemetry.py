"""The seed's telemetry API: parse/ingest, query, aggregates, batch flush and status."""

from __future__ import annotations

from flask import Blueprint, Response, request

from ..ingest import IngestError, ingest
from ..query import QueryError, ReadingQuery, fetch_buckets, fetch_readings, fetch_wide, parse_bool
from ..services import services
from .responses import error_response, json_response, now_iso

bp = Blueprint("telemetry", __name__)


def run_ingest(fmt: str | None = None, default_device_id: str | None = None) -> Response:
    svc = services()
    try:
        store = parse_bool("store", request.args.get("store"), True)
        guard = svc.extras.get("device_guard")
        outcome = ingest(request, svc.config, svc.buffer, svc.catalogue, store=store, fmt=fmt,
                         device_guard=guard() if guard else None, default_device_id=default_device_id)
    except (IngestError, QueryError) as exc:
        status = getattr(exc, "status", 400)
        return error_response(status, getattr(exc, "message", str(exc)), getattr(exc, "retry_after", None))
    return json_response(outcome.body, outcome.status, outcome.headers)


@bp.post("/telemetry/parse")
def parse() -> Response:
    return run_ingest()


@bp.post("/telemetry")
def ingest_plain() -> Response:
    return run_ingest()


@bp.get("/telemetry/query")
def query() -> Response:
    svc = services()
    try:
        q = ReadingQuery.from_args(request.args)
        wide = (request.args.get("format") or "narrow") == "wide"
        data = fetch_wide(svc.pool, q) if wide else fetch_readings(svc.pool, q)
    except QueryError as exc:
        return error_response(400, str(exc))
    return json_response({"success": True, "data": data, "count": len(data), "limit": q.limit,
                          "offset": q.offset, "order_by": q.order_by, "desc": q.desc,
                          "format": "wide" if wide else "narrow", "timestamp": now_iso()})


@bp.get("/telemetry/aggregate")
def aggregate() -> Response:
    try:
        result = fetch_buckets(services().pool, request.args)
    except QueryError as exc:
        return error_response(400, str(exc))
    return json_response({"success": True, **result, "count": len(result["data"]), "timestamp": now_iso()})


@bp.post("/telemetry/batch/flush")
def flush() -> Response:
    svc = services()
    ok = svc.buffer.flush(timeout=svc.config.ack_timeout)
    status = svc.buffer.status()
    if not ok:
        return error_response(503, "flush did not finish; pending readings stay buffered", retry_after=5,
                              batch_status=status)
    return json_response({"success": True, "message": "Batch flushed successfully",
                          "batch_status": status, "timestamp": now_iso()})


@bp.get("/telemetry/batch/status")
def batch_status() -> Response:
    svc = services()
    body = {"success": True, **svc.buffer.status(), "timestamp": now_iso()}
    spool = svc.extras.get("spool")
    if spool is not None:
        body["spool"] = spool.status()
    body["catalogue"] = svc.catalogue.status()
    if "admission" in svc.extras:
        body["admission"] = svc.extras["admission"].status()
    return json_response(body)
