"""The seed's telemetry API: parse/ingest, query, aggregates, batch flush and status."""

from __future__ import annotations

import os
from typing import Any

from flask import Blueprint, Response

from backend.api.analytics import (
    AGGREGATE_PARAMS,
    aggregate_answer,
    check_downsample,
    downsampled_readings,
    narrow_page,
)
from backend.api.ingest_http import INGEST_PARAMS, run_ingest
from backend.api.params import accepts, boolean, choice, integer, number, text, text_list, timestamp
from backend.api.responses import error_response, json_response, now_iso
from backend.ingest.parsing.base import MAX_DEVICE_ID_LEN, MAX_NAME_LEN
from backend.ops import multiproc
from backend.ops.status import merge, read_workers, worker_status
from backend.services import services
from backend.store.queries import (
    MAX_LIMIT,
    ORDER_ALIASES,
    ORDER_COLUMNS,
    QueryError,
    ReadingQuery,
    fetch_wide,
)

bp = Blueprint("telemetry", __name__)

@bp.post("/telemetry/parse")
@accepts(*INGEST_PARAMS)
def parse(p: dict[str, Any]) -> Response:
    return run_ingest(p)


@bp.post("/telemetry")
@accepts(*INGEST_PARAMS)
def ingest_plain(p: dict[str, Any]) -> Response:
    return run_ingest(p)


@bp.get("/telemetry/query")
@accepts(
    text_list("device_id", max_len=MAX_DEVICE_ID_LEN),
    text_list("metric", max_len=MAX_NAME_LEN),
    timestamp("start", aliases=("start_time",)),
    timestamp("end", aliases=("end_time",)),
    number("hours", gt=0, what="a number of hours before now"),  # when start is not given
    integer("limit", 100, 1, MAX_LIMIT),
    integer("offset", 0, 0, 10_000_000),
    choice("order_by", [*ORDER_COLUMNS, *ORDER_ALIASES], "ts"),
    boolean("desc", True),
    choice("format", ("narrow", "wide"), "narrow"),
    text("next", max_len=4000),  # the previous page's `next`: keyset pagination
    integer("downsample", None, 2, 100_000),
)
def query(p: dict[str, Any]) -> Response:
    svc = services()
    try:
        q = ReadingQuery.from_params(p)
        wide = p["format"] == "wide"
        extra: dict[str, Any] = {}
        if p["downsample"] is not None:
            check_downsample(p)
            data = downsampled_readings(svc.pool, q, p["downsample"])
            extra["downsample"] = p["downsample"]
        elif wide:
            if p["next"]:
                raise QueryError("next: keyset pages are for format=narrow; page format=wide with offset")
            data = fetch_wide(svc.pool, q)
        else:
            data, extra["next"] = narrow_page(svc.pool, q, p)
    except QueryError as exc:
        return error_response(400, str(exc))
    return json_response({"success": True, "data": data, "count": len(data), "limit": q.limit,
                          "offset": q.offset, "order_by": q.order_by, "desc": q.desc,
                          "format": "wide" if wide else "narrow", **extra, "timestamp": now_iso()})


@bp.get("/telemetry/aggregate")
@accepts(*AGGREGATE_PARAMS)
def aggregate(p: dict[str, Any]) -> Response:
    try:
        return json_response(aggregate_answer(services().pool, p))
    except QueryError as exc:
        return error_response(400, str(exc))


@bp.post("/telemetry/batch/flush")
def flush() -> Response:
    svc = services()
    ok = svc.buffer.flush(timeout=svc.config.ack_timeout)
    status = svc.buffer.status()
    if not ok:
        return error_response(503, "flush did not finish; pending readings stay buffered", retry_after=5,
                              reason="flush_timeout", batch_status=status)
    return json_response({"success": True, "message": "Batch flushed successfully",
                          "batch_status": status, "timestamp": now_iso()})


@bp.get("/telemetry/batch/status")
@accepts(choice("scope", ("instance", "worker"), "instance"))
def batch_status(p: dict[str, Any]) -> Response:
    # The whole instance by default (every worker's published status: backend/ops/status.py).
    svc = services()
    own = worker_status(svc.buffer, svc.spool, svc.catalogue, svc.admission)
    if p["scope"] == "worker":
        body = {**own, "scope": "worker"}
    else:
        body = merge(own, read_workers(multiproc.status_dir(), os.getpid()))
    return json_response({"success": True, **body, "timestamp": now_iso()})
