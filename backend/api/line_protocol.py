"""The InfluxDB door: `/write` (1.x), `/api/v2/write` (2.x), `/ping`, `/ready`, `/query` (1.x, CREATE DATABASE).

InfluxDB clients and Telegraf write line protocol here (docs/doors.md). Each body goes through
the one ingest pipeline (parser backend/ingest/parsing/line_protocol.py, transport
"line_protocol"): 204 when every line is durable; when some lines are bad the valid ones are
written and the 400 names the first bad line and why, in InfluxDB's error shape
`{"code": "invalid", "message": ...}`. Every error of these routes carries `code` and
`message` (added to our usual error body), since that is what InfluxDB clients show.
`db`/`rp` and `org`/`bucket` are accepted and not used: there is one store; the device comes
from a tag. Credentials: `Authorization: Token <key>` (2.x, Telegraf), Bearer or X-API-Key
as everywhere, and for 1.x `u`/`p` or Basic auth with the key as the password.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import orjson
from flask import Blueprint, Flask, Response, current_app, request

from backend.api.idempotent import with_idempotency
from backend.api.ingest_http import REQUEST_ADMISSION, read_body, refusal_response
from backend.api.params import accepts, boolean, choice, text
from backend.api.responses import error_response, json_response
from backend.fleet.auth import PUBLIC, guard_for, request_identity, requires
from backend.ingest.device_tags import DeviceTags
from backend.ingest.parsing.base import MAX_DEVICE_ID_LEN
from backend.ingest.parsing.line_protocol import V1_PRECISIONS, V2_PRECISIONS, LineProtocolParser
from backend.ingest.pipeline import IngestOutcome, IngestPipeline, IngestRefused, IngestRequest
from backend.ops.health import INFLUX_COMPAT_VERSION
from backend.services import services

bp = Blueprint("lineproto", __name__)

# What /ping says: the InfluxDB API these routes speak, marked as this service.
INFLUX_VERSION = INFLUX_COMPAT_VERSION
INFLUX_BUILD = "OSS"
TRANSPORT = "line_protocol"
DEVICE_TAGS_EXTENSION = "device_tags"
CODES = {400: "invalid", 401: "unauthorized", 403: "forbidden", 404: "not found", 405: "method not allowed",
         409: "conflict", 413: "request too large", 415: "unsupported media type", 422: "unprocessable entity",
         429: "too many requests", 503: "unavailable"}
STARTED = datetime.now(UTC)  # the process's start, for /ready's `started` and `up`

_COMMON = (text("device_id", max_len=MAX_DEVICE_ID_LEN),)
V1_PARAMS = (text("db", max_len=256), text("rp", max_len=256), choice("precision", V1_PRECISIONS, "ns"),
             text("u", max_len=256), text("p", max_len=256), choice("consistency", ("any", "one", "quorum", "all")),
             *_COMMON)
V2_PARAMS = (text("org", max_len=256), text("orgID", max_len=256), text("bucket", max_len=256),
             choice("precision", V2_PRECISIONS, "ns"), *_COMMON)


@bp.after_request
def _influx_error_shape(resp: Response) -> Response:
    """Errors of these routes (also the auth hook's 401/429) get InfluxDB's `code` and `message`."""
    if resp.status_code >= 400 and resp.mimetype == "application/json":
        try:
            body = orjson.loads(resp.get_data())
        except orjson.JSONDecodeError:
            return resp
        if isinstance(body, dict) and "code" not in body:
            body["code"] = CODES.get(resp.status_code, "internal error")
            body["message"] = body.get("error") or body.get("message") or ""
            resp.set_data(orjson.dumps(body))
    return resp


@bp.post("/write")
@requires("ingest")
@accepts(*V1_PARAMS)
def write_v1(p: dict[str, Any]) -> Response:
    return with_idempotency(lambda: _write(p["precision"], p["device_id"]), _influx_error)


@bp.post("/api/v2/write")
@requires("ingest")
@accepts(*V2_PARAMS)
def write_v2(p: dict[str, Any]) -> Response:
    return with_idempotency(lambda: _write(p["precision"], p["device_id"]), _influx_error)


@bp.post("/query")
@requires("ingest")
@accepts(text("q", max_len=4096), text("db", max_len=256), text("u", max_len=256), text("p", max_len=256),
         text("epoch", max_len=4), boolean("pretty", False))
def query_v1(p: dict[str, Any]) -> Response:
    # Telegraf's `influxdb` output sends CREATE DATABASE at start; there is nothing to create.
    q = (p["q"] or request.form.get("q") or "").strip()
    if q.upper().startswith("CREATE DATABASE"):
        return json_response({"results": [{"statement_id": 0}]})
    return _influx_error(400, "only CREATE DATABASE is answered here (a no-op); read data with"
                         " GET /telemetry/query", None, "unsupported_query")


@bp.route("/ping", methods=["GET", "HEAD"])
@requires(PUBLIC)
@accepts(boolean("verbose", False), boolean("wait_for_leader", False))
def ping(p: dict[str, Any]) -> Response:
    headers = {"X-Influxdb-Version": INFLUX_VERSION, "X-Influxdb-Build": INFLUX_BUILD}
    if p["verbose"]:
        return json_response({"version": INFLUX_VERSION}, 200, headers)
    resp = _no_content()
    resp.headers.update(headers)
    return resp


def _no_content() -> Response:
    resp = Response(status=204)
    del resp.headers["Content-Type"]  # a 204 has no body, so no type either
    return resp


@bp.get("/ready")
@requires(PUBLIC)
@accepts()
def ready(_p: dict[str, Any]) -> Response:
    # InfluxDB's shape (influxdb-client's ready()); we take writes (PostgreSQL or the spool) once started.
    up = time.time() - STARTED.timestamp()
    return json_response({"status": "ready", "started": STARTED.isoformat().replace("+00:00", "Z"),
                          "up": f"{up:.3f}s"})


def _write(precision: str, default_device: str | None) -> Response:
    svc = services()
    cfg = svc.config
    try:
        ident = request_identity()
        req = IngestRequest(
            body=read_body(cfg),
            content_type=request.headers.get("Content-Type", ""),
            content_encoding=request.headers.get("Content-Encoding", ""),
            default_device=request.headers.get("X-Device-Id") or default_device,
            parser=LineProtocolParser(precision=precision, device_tags=tuple(cfg.line_protocol_device_tags),
                                      metric_style=cfg.line_protocol_metric),
            key_id=ident.key_id if ident is not None else None,
            device_guard=guard_for(ident),
            admission=REQUEST_ADMISSION,
            transport=TRANSPORT,
        )
        outcome = IngestPipeline(cfg, svc.buffer, svc.catalogue).run(req)
    except IngestRefused as exc:
        return refusal_response(exc)  # given `code` and `message` by _influx_error_shape
    if outcome.stored and outcome.device_metadata:
        tags: DeviceTags | None = current_app.extensions.get(DEVICE_TAGS_EXTENSION)
        if tags is not None:
            tags.record(outcome.device_metadata)
    if outcome.status == 200:
        return _no_content()
    return _partial(outcome)


def _partial(o: IngestOutcome) -> Response:
    """400 naming the first refused line: a parse error, a type clash or a conflicting value."""
    # (line, what happened to it): refused lines quote their text, conflicts name the metric
    bad: list[tuple[int, str]] = [(e.position, f"unable to parse '{e.raw[:200]}': {e.reason}" if e.raw
                                   else f"unable to parse: {e.reason}") for e in o.rejected]
    bad += [(c.position, f"{c.metric!r} not written: {c.reason}") for c in o.conflicts]
    if not bad:
        # Nothing valid and nothing refused: an empty body (only comments or blank lines).
        return _influx_error(400, "writing requires points", None, "no_points")
    line, what = min(bad, key=lambda b: b[0])
    lines = len({b[0] for b in bad})
    kept = (f"the other lines' {o.accepted + o.duplicates} readings are stored" if o.stored
            else "nothing was written")
    message = f"{'partial write: ' if o.stored else ''}line {line}: {what} ({lines} line(s) refused; {kept})"
    # InfluxDB's `code` and `message`, and our own `error` as every other 4xx of this service has.
    body = {"code": "invalid", "message": message, "success": False, "error": message, "line": line,
            "lines_refused": lines, "written": o.accepted if o.stored else 0, "duplicates": o.duplicates,
            "refused": [{"line": n, "reason": r} for n, r in sorted(bad)[:100]]}
    return json_response(body, 400)


def _influx_error(status: int, message: str, retry_after: int | None, reason: str) -> Response:
    return error_response(status, message, retry_after, reason=reason)  # `code`, `message`: _influx_error_shape


def init_app(app: Flask, device_tags: DeviceTags) -> None:
    app.extensions[DEVICE_TAGS_EXTENSION] = device_tags
    app.register_blueprint(bp)
