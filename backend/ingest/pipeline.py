"""From the bytes of one request body to a durable acknowledgement, without HTTP.

Shared by every ingest endpoint (`/telemetry/parse`, `/api/ingest`, `/api/telemetry`):
decode (gzip, UTF-8), pick the parser, check the catalogue, hand the readings to the
buffer and wait until they are durable. The HTTP side (backend/api/ingest_http.py) reads
the body and builds an `IngestRequest`; it gets an `IngestOutcome` back, or an
`IngestRefused` whose `kind` it maps to a status. A refusal's `message` is shown to the
client; its `detail` (database errors, hosts) is only for the log.
"""

from __future__ import annotations

import time
import uuid
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from backend.config import Config
from backend.ingest.buffer import BatchBuffer, BufferFull
from backend.ingest.catalogue import CatalogueLimit, FieldCatalogue
from backend.ingest.parsing import PARSER_VERSION, ParseContext, ParseError, Parser, get_parser, parser_for_content_type
from backend.ingest.parsing.base import DEVICE_RE, Message, Reading
from backend.ingest.parsing.server_time import assign_server_times
from backend.ingest.sinks import Submission

# What ingest calls with the request's device ids: None (allowed) or the reason it is refused
# (backend/fleet/auth/guard.py builds them from the request's identity).
DeviceGuard = Callable[[Iterable[str]], str | None]


class Admission(Protocol):
    """This request's share of the worker's readings in flight (backend/ingest/admission.py).

    Each call replaces the share; raises IngestRefused(BUSY) when it does not fit.
    """

    def body(self, nbytes: int) -> None:
        """Hold the readings a (decompressed) body of `nbytes` bytes is estimated to carry."""

    def readings(self, count: int) -> None:
        """Hold the readings the body was parsed into."""


class IngestEvents(Protocol):
    """Who counts ingest outcomes (backend/ops/metrics.py), by parser name and transport."""

    def ingested(self, fmt: str, transport: str, accepted: int, duplicates: int, rejected: int) -> None:
        """A request not refused whole: its readings durably accepted, duplicate and refused."""

    def refused(self, reason: str, transport: str) -> None:
        """A request refused whole (an IngestRefused kind): nothing of it was stored."""


class _Unbounded:
    def body(self, nbytes: int) -> None:
        return None

    def readings(self, count: int) -> None:
        return None

# The kinds of IngestRefused, for the HTTP side to map to statuses (and shown as `reason`).
TOO_LARGE = "too_large"
UNSUPPORTED = "unsupported_type"
INVALID = "invalid"
FORBIDDEN_DEVICE = "forbidden_device"
TOO_MANY_NEW_FIELDS = "too_many_new_fields"
NEW_FIELD_QUOTA = "new_field_quota"
CATALOGUE_UNCHECKED = "catalogue_unchecked"
BUSY = "busy"
BUFFER_FULL = "buffer_full"
STORAGE_TIMEOUT = "storage_timeout"
STORAGE_FAILED = "storage_failed"


class IngestRefused(Exception):
    """Nothing of the request was stored; `message` says why to the client, `detail` to the log."""

    def __init__(self, kind: str, message: str, retry_after: int | None = None, detail: str = "") -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.retry_after = retry_after
        self.detail = detail


@dataclass(frozen=True)
class IngestRequest:
    body: bytes  # as received: still compressed when `content_encoding` says so
    content_type: str = ""
    content_encoding: str = ""
    # X-Device-Id or ?device_id= (checked here); else `fallback_device`, the endpoint's own default.
    default_device: str | None = None
    fallback_device: str | None = None
    format: str | None = None  # a parser name; else the Content-Type picks it
    # A configured parser (line protocol's precision, Teltonika's register mapping); wins over `format`.
    parser: Parser | None = None
    transport: str = "http"  # how the body came: http, line_protocol, mqtt (metrics label readings by it)
    store: bool = True
    key_id: str | None = None  # for the catalogue's per-key bound on new metric names
    device_guard: DeviceGuard | None = None
    admission: Admission | None = None
    # ACK_TIMEOUT bounds the whole request, from when its reading began.
    started: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class Conflict:
    position: int
    metric: str
    reason: str


@dataclass(frozen=True)
class BatchStatus:
    pending_records: int
    batch_size: int

    @property
    def batch_full(self) -> bool:
        return self.pending_records >= self.batch_size


@dataclass
class IngestOutcome:
    """What happened to a request that was not refused whole.

    accepted + duplicates + len(conflicts) + rejected_readings == readings sent.
    """

    batch_id: uuid.UUID
    format: str
    received_at: datetime
    messages: int  # accepted messages
    parsed: int  # readings of the accepted messages
    rejected: list[ParseError]
    rejected_readings: int
    server_timed: int
    single: Message | None  # the only accepted message, for the seed's `parsed_data`
    stored: bool = False
    durability: str | None = None  # committed | spooled
    accepted: int = 0
    duplicates: int = 0
    conflicts: list[Conflict] = field(default_factory=list)
    quarantined: int = 0
    batch_status: BatchStatus | None = None
    transport: str = "http"
    # What the format said about the devices of the accepted readings (line protocol's tags).
    device_metadata: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def status(self) -> int:
        if not self.parsed:
            return 400
        if self.stored and (self.rejected or self.quarantined):
            return 207
        return 200


class IngestPipeline:
    def __init__(self, config: Config, buffer: BatchBuffer, catalogue: FieldCatalogue,
                 events: IngestEvents | None = None) -> None:
        self.config = config
        self.buffer = buffer
        self.catalogue = catalogue
        self.events = events

    def run(self, req: IngestRequest, *, transport: str | None = None) -> IngestOutcome:
        """Parse, validate and (when `req.store`) durably accept one request's readings.

        `transport` ("http", "line_protocol", "mqtt"; default `req.transport`) labels the counts.
        """
        transport = transport or req.transport
        if self.events is None:
            return self._run(req)
        try:
            outcome = self._run(req)
        except IngestRefused as exc:
            self.events.refused(exc.kind, transport)
            raise
        if req.store:
            self.events.ingested(outcome.format, transport, outcome.accepted, outcome.duplicates,
                                 outcome.rejected_readings + len(outcome.conflicts))
        return outcome

    def _run(self, req: IngestRequest) -> IngestOutcome:
        cfg = self.config
        received = datetime.now(UTC)
        admission = req.admission or _Unbounded()
        body = decode_body(req.body, req.content_encoding, cfg.max_decompressed_bytes, admission)
        parser = req.parser or pick_parser(req.format, req.content_type)
        ctx = ParseContext(received_at=received, default_device_id=default_device(req.default_device)
                           or req.fallback_device, max_messages=cfg.max_lines_per_body)
        result = parser.parse(body, ctx)
        admission.readings(sum(len(m.readings) for m in result.messages))
        if req.device_guard is not None:
            # Before the catalogue check: a refused request must not register new metric names.
            denied = req.device_guard({r.device_id for m in result.messages for r in m.readings})
            if denied:
                raise IngestRefused(FORBIDDEN_DEVICE, denied)
        server_timed = assign_server_times(result.messages, received)
        sent = {m.position: len(m.readings) for m in result.messages}
        try:
            messages, type_errors, typed = self.catalogue.check(
                result.messages, key_id=req.key_id,
                timeout=min(self.catalogue.timeout, self._time_left(req.started) / 2))
        except CatalogueLimit as exc:
            raise IngestRefused(exc.kind, exc.message, retry_after=exc.retry_after) from exc
        errors: list[ParseError] = sorted(result.errors + type_errors, key=lambda e: e.position)
        # Readings of the refused messages: a message the catalogue refused carried all of its own.
        rejected_readings = sum(e.readings for e in result.errors) + sum(sent.get(e.position, 1) for e in type_errors)
        if "\x00" in body:
            # Kept for debugging, but PostgreSQL text cannot hold NUL: stored as U+FFFD (the
            # values with one were refused by the parser, so no reading is changed by this).
            body = body.replace("\x00", "\ufffd")
            errors = [ParseError(e.position, e.reason, e.raw.replace("\x00", "\ufffd")) for e in errors]
        readings: list[Reading] = []
        positions: list[int] = []
        flags: list[bool] = []
        for m in messages:
            readings += m.readings
            positions += [m.position] * len(m.readings)
            if server_timed:
                flags += [m.server_time] * len(m.readings)
        outcome = IngestOutcome(
            batch_id=uuid.uuid4(), format=parser.name, received_at=received, messages=len(messages),
            parsed=len(readings), rejected=errors, rejected_readings=rejected_readings,
            server_timed=server_timed, single=messages[0] if len(messages) == 1 else None, transport=req.transport)
        if result.device_metadata:
            accepted = {m.readings[0].device_id for m in messages}
            outcome.device_metadata = {d: t for d, t in result.device_metadata.items() if d in accepted}
        if not req.store:
            return outcome
        sub = Submission(
            request_id=outcome.batch_id,
            readings=readings,
            received_at=received,
            raw_payload=body if cfg.store_raw_payload else None,
            content_type=req.content_type or None,
            device_id=readings[0].device_id if readings else ctx.default_device_id,
            parser_version=PARSER_VERSION,
            data_source=cfg.data_source,
            rejected=errors,
            typed=typed,
            positions=positions,
            server_timed=flags,
        )
        try:
            self.buffer.submit(sub)
        except BufferFull as exc:
            raise IngestRefused(BUFFER_FULL, "ingest cannot take readings now (buffer full or storage unreachable);"
                                " not stored, retry later", retry_after=exc.retry_after, detail=str(exc)) from exc
        if not readings:
            return outcome  # nothing valid: the rejected lines still go to quarantine with the next flush
        # 2xx only for "committed" (in PostgreSQL) or "spooled" (fsync'd to the local spool).
        if not self.buffer.wait(sub, self._time_left(req.started)) or sub.outcome not in ("committed", "spooled"):
            retry = self.buffer.retry_after_hint()
            if sub.outcome == "failed":
                raise IngestRefused(STORAGE_FAILED, "storage refused the write; not stored, retry later",
                                    retry_after=retry, detail=sub.error or "")
            raise IngestRefused(STORAGE_TIMEOUT, f"storage did not confirm the write in {cfg.ack_timeout:g}s;"
                                " not stored, retry later", retry_after=retry,
                                detail=self.buffer.stats.last_error or "busy")
        outcome.stored = True
        outcome.durability = sub.outcome
        _account(outcome, sub, readings, positions)
        outcome.batch_status = BatchStatus(self.buffer.pending_rows, self.buffer.batch_size)
        return outcome

    def _time_left(self, started: float) -> float:
        return max(0.1, self.config.ack_timeout - (time.monotonic() - started))


def decode_body(data: bytes, encoding: str, cap: int, admission: Admission) -> str:
    """The body as text: inflated (gzip, deflate) up to `cap` bytes, then UTF-8."""
    encoding = encoding.strip().lower()
    if encoding in ("gzip", "x-gzip", "deflate"):
        data = _inflate(data, encoding, cap)
    elif encoding not in ("", "identity"):
        raise IngestRefused(UNSUPPORTED, f"Content-Encoding {encoding!r} is not supported (use gzip)")
    admission.body(len(data))  # decompressed, or sent without a Content-Length
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise IngestRefused(INVALID, f"body is not valid UTF-8 (byte {exc.start})") from exc


def _inflate(data: bytes, encoding: str, cap: int) -> bytes:
    wbits = 47 if encoding != "deflate" else 15  # 47: gzip or zlib header, auto-detected
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(data, cap + 1)
    except zlib.error as exc:
        raise IngestRefused(INVALID, f"body is not valid {encoding}: {exc}") from exc
    if len(out) > cap or inflater.unconsumed_tail:
        raise IngestRefused(TOO_LARGE, f"decompressed body is over the {cap}-byte limit")
    return out


def pick_parser(name: str | None, content_type: str) -> Parser:
    if name:
        parser = get_parser(name)
        if parser is None:
            raise IngestRefused(UNSUPPORTED, f"unknown format {name!r}")
        return parser
    parser = parser_for_content_type(content_type)
    if parser is None:
        raise IngestRefused(UNSUPPORTED, f"Content-Type {content_type!r} is not supported;"
                                         " use text/plain or application/json")
    return parser


def default_device(device: str | None) -> str | None:
    if device is not None and not DEVICE_RE.fullmatch(device):
        raise IngestRefused(INVALID, f"device id {device[:40]!r} has characters outside [A-Za-z0-9_.:-]")
    return device


def _account(outcome: IngestOutcome, sub: Submission, readings: list[Reading], positions: list[int]) -> None:
    """Fill accepted/duplicates/conflicts from the write.

    A spooled request's readings are all accepted: duplicates and conflicts among them are
    sorted out when the spool is replayed (counted in the spool's replay figures).
    """
    if sub.outcome != "committed" or sub.inserted is None:
        outcome.accepted = len(readings)
        return
    outcome.accepted = sub.inserted
    outcome.duplicates = sub.duplicates or 0
    outcome.conflicts = [Conflict(positions[i], readings[i].metric, reason) for i, reason in sub.conflicts]
    outcome.quarantined = sub.quarantined
    outcome.rejected_readings += sub.quarantined - len(sub.conflicts)  # refused by the metric's type
