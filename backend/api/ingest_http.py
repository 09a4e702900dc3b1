"""The HTTP side of ingest: read the body, call the pipeline, turn its outcome into the answer.

Reading the body is HTTP (Content-Length, chunked transfer errors, the worker's in-flight
budget before the body is in memory); everything after is backend/ingest/pipeline.py,
which knows no Flask. Its refusals are mapped to statuses here, and their detail (database
errors) goes to the log under the request id, never into the answer.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Response, request

from backend.api.idempotent import with_idempotency
from backend.api.params import boolean, text
from backend.api.request_id import current_request_id
from backend.api.responses import body_error_text, body_read_errors, error_response, json_response
from backend.config import Config, ConfigError
from backend.fleet.auth import guard_for, request_identity
from backend.fleet.auth.hooks import UNAUTHORIZED
from backend.fleet.auth.keystore import ANONYMOUS_KEY_ID
from backend.ingest import admission, pipeline
from backend.ingest.parsing import PARSER_VERSION, Parser
from backend.ingest.parsing.base import MAX_DEVICE_ID_LEN, Message
from backend.ingest.parsing.teltonika import looks_like_teltonika
from backend.ingest.pipeline import IngestOutcome, IngestPipeline, IngestRefused, IngestRequest
from backend.ingest.register_map import teltonika_parser
from backend.ops.requests import note_device
from backend.services import services
from backend.store.queries import iso

log = logging.getLogger(__name__)

# The query parameters of every ingest endpoint (also /api/ingest and /api/telemetry).
INGEST_PARAMS = (
    boolean("store", True),
    text("format", max_len=40),  # checked against the parsers by pipeline.pick_parser (415)
    text("device_id", max_len=MAX_DEVICE_ID_LEN),  # the default device (pipeline.default_device)
)

STATUS = {
    pipeline.TOO_LARGE: 413,
    pipeline.UNSUPPORTED: 415,
    pipeline.INVALID: 400,
    pipeline.FORBIDDEN_DEVICE: 403,
    pipeline.TOO_MANY_NEW_FIELDS: 400,
    pipeline.NEW_FIELD_QUOTA: 429,
    pipeline.CATALOGUE_UNCHECKED: 503,
    pipeline.BUSY: 503,
    pipeline.BUFFER_FULL: 503,
    pipeline.STORAGE_TIMEOUT: 503,
    pipeline.STORAGE_FAILED: 503,
}

# Said in every answer that has server-timed messages, so a client reading its answer learns
# why its readings' times differ by microseconds (README, "What a 2xx means").
SERVER_TIME_RULE = ("messages without ts got the time of receipt + 1 µs per earlier message of the same device"
                    " without ts in this body, in body order (later if this worker already used those µs)")


class RequestAdmission:
    """The pipeline's Admission for the current Flask request (shares held in flask.g)."""

    def body(self, nbytes: int) -> None:
        self.readings(admission.estimate(nbytes))

    def readings(self, count: int) -> None:
        refused = admission.reserve(count)
        if refused:
            raise IngestRefused(pipeline.BUSY, refused, retry_after=admission.RETRY_AFTER_S)


REQUEST_ADMISSION = RequestAdmission()


def run_ingest(p: dict[str, Any], fmt: str | None = None, default_device_id: str | None = None,
               extra: dict[str, Any] | None = None) -> Response:
    """`p`: the values of INGEST_PARAMS; `extra`: keys an endpoint adds to a 2xx answer.

    With an `Idempotency-Key` header, a re-send gets the first answer (backend/api/idempotent.py).
    """
    return with_idempotency(lambda: _run_ingest(p, fmt, default_device_id, extra))


def _run_ingest(p: dict[str, Any], fmt: str | None, default_device_id: str | None,
                extra: dict[str, Any] | None) -> Response:
    svc = services()
    try:
        ident = request_identity()
        data = read_body(svc.config)
        fmt = request.args.get("format") or _sniffed(data) or fmt
        req = IngestRequest(
            body=data,
            content_type=request.headers.get("Content-Type", ""),
            content_encoding=request.headers.get("Content-Encoding", ""),
            default_device=request.headers.get("X-Device-Id") or request.args.get("device_id"),
            fallback_device=default_device_id,
            format=fmt,
            parser=_configured_parser(svc.config, fmt),
            store=p["store"],
            key_id=ident.key_id if ident is not None else None,
            device_guard=guard_for(ident),
            admission=REQUEST_ADMISSION,
        )
        outcome = IngestPipeline(svc.config, svc.buffer, svc.catalogue, svc.ingest_events).run(req)
    except IngestRefused as exc:
        if exc.kind == pipeline.FORBIDDEN_DEVICE and ident is not None and ident.key_id == ANONYMOUS_KEY_ID:
            return anonymous_refused()
        return refusal_response(exc)
    if outcome.single is not None and outcome.single.readings:
        note_device(outcome.single.readings[0].device_id)  # for the access log (backend/ops/requests.py)
    body = outcome_body(outcome, p["store"], svc.config.data_source)
    if extra and outcome.status in (200, 207):
        body.update(extra)
    return json_response(body, outcome.status)


def _sniffed(data: bytes) -> str | None:
    """"teltonika" for a JSON body in Teltonika's Data to Server template (`{"TS": ...`), which the
    plain JSON parser would store with its time as a metric; None otherwise."""
    if request.headers.get("Content-Encoding", "").strip().lower() not in ("", "identity"):
        return None
    mime = request.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
    return "teltonika" if mime in ("application/json", "text/json") and looks_like_teltonika(data) else None


def _configured_parser(cfg: Config, fmt: str | None) -> Parser | None:
    """Teltonika with the gateways' register mapping (TELTONIKA_REGISTER_MAP); None: the registry's."""
    if fmt != "teltonika":
        return None
    try:
        return teltonika_parser(cfg)
    except ConfigError as exc:  # a broken map file: register lists are then refused, naming the mapping
        log.error("%s", exc)
        return None


def read_body(cfg: Config) -> bytes:
    """The request's body, bounded by MAX_BODY_BYTES; admitted by its length before it is read."""
    length = request.content_length
    if length is not None and length > cfg.max_body_bytes:
        raise IngestRefused(pipeline.TOO_LARGE, f"body of {length} bytes is over the {cfg.max_body_bytes}-byte limit")
    if length is not None:
        REQUEST_ADMISSION.body(length)  # before the body is read into memory
    try:
        data = request.get_data(cache=False)
    except body_read_errors() as exc:  # a broken chunked body is the client's, not a 500
        raise IngestRefused(pipeline.INVALID, body_error_text(exc)) from exc
    if len(data) > cfg.max_body_bytes:
        raise IngestRefused(pipeline.TOO_LARGE, f"body is over the {cfg.max_body_bytes}-byte limit")
    return data


def anonymous_refused() -> Response:
    """A keyless writer naming a device ANONYMOUS_DEVICES does not list: as without the setting."""
    resp = error_response(401, UNAUTHORIZED)
    resp.headers["WWW-Authenticate"] = 'Bearer realm="telemetry"'
    return resp


def refusal_response(exc: IngestRefused) -> Response:
    status = STATUS[exc.kind]
    if status >= 500:
        log.warning("request %s: ingest refused (%s): %s%s", current_request_id(), exc.kind, exc.message,
                    f"; {exc.detail}" if exc.detail else "")
    return error_response(status, exc.message, exc.retry_after, reason=exc.kind)


def outcome_body(o: IngestOutcome, store: bool, data_source: str) -> dict[str, Any]:
    """The JSON answer to an ingest request (the seed's fields and ours, in this order)."""
    body: dict[str, Any] = {
        "success": o.parsed > 0,
        "batch_id": str(o.batch_id),
        "format": o.format,
        "messages": o.messages,
        "accepted": o.accepted,
        "parsed": o.parsed,
        "duplicates": o.duplicates,
        "conflicts": len(o.conflicts),
        "conflicting": [{"position": c.position, "metric": c.metric, "reason": c.reason} for c in o.conflicts[:100]],
        "rejected_count": len(o.rejected),
        "rejected_readings": o.rejected_readings,
        "rejected": [e.as_dict() for e in o.rejected[:100]],
        "stored": o.stored,
        "timestamp": o.received_at.isoformat().replace("+00:00", "Z"),
    }
    if o.server_timed:
        body["server_timed"] = o.server_timed
        body["server_time_rule"] = SERVER_TIME_RULE
    if o.single is not None:
        body["parsed_data"] = _seed_parsed_data(o.single, data_source)
    if store and not o.parsed:
        body["error"] = "no valid readings in body"
    if o.stored:
        body["durability"] = o.durability
        if o.quarantined:
            body["quarantined"] = o.quarantined
        if o.batch_status is not None:
            body["batch_status"] = {"pending_records": o.batch_status.pending_records,
                                    "batch_size": o.batch_status.batch_size,
                                    "batch_full": o.batch_status.batch_full}
    return body


def _seed_parsed_data(msg: Message, data_source: str) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for r in msg.readings:
        data[r.metric] = r.value_text if r.value_text is not None else _num(r.value)
    first = msg.readings[0]
    data["device_id"] = first.device_id
    data["ts"] = iso(first.ts)  # one time form in every answer: UTC, ending in Z
    data["raw_data"] = msg.raw
    data["parser_version"] = PARSER_VERSION
    data["data_source"] = data_source
    return data


def _num(v: float | None) -> float | int | None:
    if v is not None and v.is_integer() and abs(v) < 2**53:
        return int(v)
    return v
