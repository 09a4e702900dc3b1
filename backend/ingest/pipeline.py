"""From an HTTP request body to a durable acknowledgement.

Shared by every ingest endpoint (`/telemetry/parse`, `/api/ingest`, `/api/telemetry`):
decode (gzip, UTF-8), pick the parser, check the catalogue, hand the readings to the
buffer and wait until they are durable. Failures of the client's making are 4xx with the
reason; a database that cannot take the write in time is 503 with Retry-After.
"""

from __future__ import annotations

import time
import uuid
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from flask import Request

from backend.api.responses import body_error_text, body_read_errors
from backend.config import Config
from backend.ingest import admission
from backend.ingest.buffer import BatchBuffer, BufferFull
from backend.ingest.catalogue import CatalogueLimit, FieldCatalogue
from backend.ingest.parsing import PARSER_VERSION, ParseContext, ParseError, get_parser, parser_for_content_type
from backend.ingest.parsing.base import DEVICE_RE, Message
from backend.ingest.parsing.server_time import assign_server_times
from backend.ingest.sinks import Submission
from backend.store.queries import iso

# Said in every answer that has server-timed messages, so a client reading its answer learns
# why its readings' times differ by microseconds (README, "What a 2xx means").
SERVER_TIME_RULE = ("messages without ts got the time of receipt + 1 µs per earlier message of the same device"
                    " without ts in this body, in body order (later if this worker already used those µs)")


class IngestError(Exception):
    def __init__(self, status: int, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after


@dataclass
class IngestOutcome:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


def admit(readings: int) -> None:
    """Hold `readings` of this worker's MAX_READINGS_IN_FLIGHT for the request (backend/admission.py)."""
    refused = admission.reserve(readings)
    if refused:
        raise IngestError(503, refused, retry_after=admission.RETRY_AFTER_S)


def read_body(request: Request, cfg: Config) -> str:
    length = request.content_length
    if length is not None and length > cfg.max_body_bytes:
        raise IngestError(413, f"body of {length} bytes is over the {cfg.max_body_bytes}-byte limit")
    if length is not None:
        admit(admission.estimate(length))  # before the body is read into memory
    try:
        data = request.get_data(cache=False)
    except body_read_errors() as exc:  # a broken chunked body is the client's, not a 500
        raise IngestError(400, body_error_text(exc)) from exc
    if len(data) > cfg.max_body_bytes:
        raise IngestError(413, f"body is over the {cfg.max_body_bytes}-byte limit")
    encoding = (request.headers.get("Content-Encoding") or "").strip().lower()
    if encoding in ("gzip", "x-gzip", "deflate"):
        data = _inflate(data, encoding, cfg.max_decompressed_bytes)
    elif encoding not in ("", "identity"):
        raise IngestError(415, f"Content-Encoding {encoding!r} is not supported (use gzip)")
    admit(admission.estimate(len(data)))  # decompressed, or sent without a Content-Length
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise IngestError(400, f"body is not valid UTF-8 (byte {exc.start})") from exc


def _inflate(data: bytes, encoding: str, cap: int) -> bytes:
    wbits = 47 if encoding != "deflate" else 15  # 47: gzip or zlib header, auto-detected
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(data, cap + 1)
    except zlib.error as exc:
        raise IngestError(400, f"body is not valid {encoding}: {exc}") from exc
    if len(out) > cap or inflater.unconsumed_tail:
        raise IngestError(413, f"decompressed body is over the {cap}-byte limit")
    return out


def pick_parser(request: Request, default: str | None = None):
    name = request.args.get("format") or default
    if name:
        parser = get_parser(name)
        if parser is None:
            raise IngestError(415, f"unknown format {name!r}")
        return parser
    ctype = request.headers.get("Content-Type", "")
    parser = parser_for_content_type(ctype)
    if parser is None:
        raise IngestError(415, f"Content-Type {ctype!r} is not supported; use text/plain or application/json")
    return parser


def default_device(request: Request) -> str | None:
    device = request.headers.get("X-Device-Id") or request.args.get("device_id")
    if device is not None and not DEVICE_RE.fullmatch(device):
        raise IngestError(400, f"device id {device[:40]!r} has characters outside [A-Za-z0-9_.:-]")
    return device


def ingest(
    request: Request,
    cfg: Config,
    buffer: BatchBuffer,
    catalogue: FieldCatalogue,
    *,
    store: bool = True,
    fmt: str | None = None,
    device_guard: Callable[[Iterable[str]], str | None] | None = None,
    default_device_id: str | None = None,
    key_id: str | None = None,
) -> IngestOutcome:
    """Parse, validate and (when `store`) durably accept one request's readings."""
    received = datetime.now(UTC)
    started = time.monotonic()  # ACK_TIMEOUT bounds the whole request, catalogue included
    body = read_body(request, cfg)
    parser = pick_parser(request, fmt)
    ctx = ParseContext(received_at=received, default_device_id=default_device(request) or default_device_id,
                       max_messages=cfg.max_lines_per_body)
    result = parser.parse(body, ctx)
    admit(sum(len(m.readings) for m in result.messages))
    if device_guard is not None:
        # Before the catalogue check: a refused request must not register new metric names.
        denied = device_guard({r.device_id for m in result.messages for r in m.readings})
        if denied:
            raise IngestError(403, denied)
    server_timed = assign_server_times(result.messages, received)
    sent = {m.position: len(m.readings) for m in result.messages}
    try:
        messages, type_errors, typed = catalogue.check(
            result.messages, key_id=key_id,
            timeout=min(catalogue.timeout, _time_left(cfg, started) / 2))
    except CatalogueLimit as exc:
        raise IngestError(exc.status, exc.message, retry_after=exc.retry_after) from exc
    errors: list[ParseError] = sorted(result.errors + type_errors, key=lambda e: e.position)
    # Readings of the refused messages: a message the catalogue refused carried all of its own.
    rejected_readings = sum(e.readings for e in result.errors) + sum(sent.get(e.position, 1) for e in type_errors)
    if "\x00" in body:
        # Kept for debugging, but PostgreSQL text cannot hold NUL: stored as U+FFFD (the
        # values with one were refused by the parser, so no reading is changed by this).
        body = body.replace("\x00", "\ufffd")
        errors = [ParseError(e.position, e.reason, e.raw.replace("\x00", "\ufffd")) for e in errors]
    request_id = uuid.uuid4()
    readings: list = []
    positions: list[int] = []
    flags: list[bool] = []
    for m in messages:
        readings += m.readings
        positions += [m.position] * len(m.readings)
        if server_timed:
            flags += [m.server_time] * len(m.readings)
    body_out: dict[str, Any] = {
        "success": bool(readings),
        "batch_id": str(request_id),
        "format": parser.name,
        "messages": len(messages),
        "accepted": 0,
        "parsed": len(readings),
        "duplicates": 0,
        "conflicts": 0,
        "conflicting": [],
        "rejected_count": len(errors),
        "rejected_readings": rejected_readings,
        "rejected": [e.as_dict() for e in errors[:100]],
        "stored": False,
        "timestamp": received.isoformat().replace("+00:00", "Z"),
    }
    if server_timed:
        body_out["server_timed"] = server_timed
        body_out["server_time_rule"] = SERVER_TIME_RULE
    if len(messages) == 1:
        body_out["parsed_data"] = _seed_parsed_data(messages[0], cfg)
    if not store:
        return IngestOutcome(200 if readings else 400, body_out)
    sub = Submission(
        request_id=request_id,
        readings=readings,
        received_at=received,
        raw_payload=body if cfg.store_raw_payload else None,
        content_type=request.headers.get("Content-Type"),
        device_id=readings[0].device_id if readings else ctx.default_device_id,
        parser_version=PARSER_VERSION,
        data_source=cfg.data_source,
        rejected=errors,
        typed=typed,
        positions=positions,
        server_timed=flags,
    )
    try:
        buffer.submit(sub)
    except BufferFull as exc:
        raise IngestError(503, f"ingest cannot take readings now ({exc}); not stored, retry later",
                          retry_after=getattr(exc, "retry_after", 5)) from exc
    if not readings:
        # Nothing valid: the rejected lines still go to quarantine with the next flush.
        body_out["error"] = "no valid readings in body"
        return IngestOutcome(400, body_out)
    # 2xx only for "committed" (in PostgreSQL) or "spooled" (fsync'd to the local spool).
    if not buffer.wait(sub, _time_left(cfg, started)) or sub.outcome not in ("committed", "spooled"):
        why = sub.error if sub.outcome == "failed" else (f"storage did not confirm the write in {cfg.ack_timeout:g}s"
                                                          f" ({buffer.stats.last_error or 'busy'})")
        raise IngestError(503, f"{why}; not stored, retry later", retry_after=buffer.retry_after_hint())
    body_out["stored"] = True
    body_out["durability"] = sub.outcome
    not_stored = _account(body_out, sub, readings, positions)
    body_out["batch_status"] = {
        "pending_records": buffer.pending_rows,
        "batch_size": buffer.batch_size,
        "batch_full": buffer.pending_rows >= buffer.batch_size,
    }
    return IngestOutcome(207 if errors or not_stored else 200, body_out)


def _account(body_out: dict[str, Any], sub: Submission, readings: list, positions: list[int]) -> int:
    """Fill accepted/duplicates/conflicts from the write; returns the readings not stored.

    accepted + duplicates + conflicts + rejected_readings == readings sent. A spooled
    request's readings are all accepted: duplicates and conflicts among them are sorted
    out when the spool is replayed (counted in the spool's replay figures).
    """
    if sub.outcome != "committed" or sub.inserted is None:
        body_out["accepted"] = len(readings)
        return 0
    type_refused = sub.quarantined - len(sub.conflicts)
    body_out["accepted"] = sub.inserted
    body_out["duplicates"] = sub.duplicates or 0
    body_out["conflicts"] = len(sub.conflicts)
    body_out["conflicting"] = [{"position": positions[i], "metric": readings[i].metric, "reason": reason}
                               for i, reason in sub.conflicts[:100]]
    body_out["rejected_readings"] += type_refused
    if sub.quarantined:
        body_out["quarantined"] = sub.quarantined
    return sub.quarantined


def _time_left(cfg: Config, started: float) -> float:
    return max(0.1, cfg.ack_timeout - (time.monotonic() - started))


def _seed_parsed_data(msg: Message, cfg: Config) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for r in msg.readings:
        data[r.metric] = r.value_text if r.value_text is not None else _num(r.value)
    first = msg.readings[0]
    data["device_id"] = first.device_id
    data["ts"] = iso(first.ts)  # one time form in every answer: UTC, ending in Z
    data["raw_data"] = msg.raw
    data["parser_version"] = PARSER_VERSION
    data["data_source"] = cfg.data_source
    return data


def _num(v: float | None) -> float | int | None:
    if v is not None and v.is_integer() and abs(v) < 2**53:
        return int(v)
    return v
