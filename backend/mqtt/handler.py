"""One MQTT message -> the ingest pipeline -> whether to acknowledge it.

The PUBACK is the MQTT form of a 2xx, so it means the same: the readings are committed or
spooled. The answer is one of:
- ack, stored: the pipeline made the readings durable (duplicates of a re-sent message
  with the same times count as stored; nothing is written twice);
- ack, refused: the message can never be stored (no such topic kind, a key that may not
  write, invalid body): logged and quarantined with the reason, then acknowledged so the
  broker does not redeliver it forever;
- no ack: the subscriber is stopping while storage could not take the readings; the
  broker keeps the message in the persistent session and delivers it again later.
While storage is only temporarily unable (busy, buffer full, database and spool down), the
handler retries with backoff (tenacity) rather than acknowledging or dropping.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import psycopg
from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout
from tenacity import Retrying, retry_if_exception, stop_when_event_set, wait_exponential_jitter

from backend.fleet.attributes import merge_attributes
from backend.fleet.auth.guard import refused_devices
from backend.fleet.auth.keystore import Identity
from backend.fleet.devices import DeviceError
from backend.ingest import pipeline
from backend.ingest.idempotency import (
    Claimed,
    IdempotencyStore,
    IdempotencyUnavailable,
    InFlight,
    InvalidIdempotencyKey,
    Mismatch,
    Outcome,
    StoredAnswer,
    check_key,
    fingerprint,
)
from backend.ingest.parsing import Parser
from backend.ingest.parsing.base import InvalidValue
from backend.ingest.parsing.teltonika import RegisterMap, TeltonikaParser
from backend.ingest.parsing.thingsboard import parse_attributes
from backend.ingest.pipeline import IngestOutcome, IngestPipeline, IngestRefused, IngestRequest
from backend.mqtt.keys import KeyRefused, KeyResolver
from backend.mqtt.quarantine import Quarantine
from backend.mqtt.settings import MqttSettings
from backend.mqtt.topics import Route, Unroutable, route

log = logging.getLogger("backend.mqtt")

# Refusals that go away by themselves: retried, never acknowledged while they last.
TRANSIENT = frozenset({pipeline.BUSY, pipeline.BUFFER_FULL, pipeline.STORAGE_TIMEOUT, pipeline.STORAGE_FAILED,
                       pipeline.CATALOGUE_UNCHECKED})
# The database not answering (down, restarting, pool exhausted): retried, never acknowledged.
DATABASE_ERRORS = (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout, PoolClosed)
T = TypeVar("T")
FORMATS = {"thingsboard": "thingsboard", "gateway": "thingsboard-gateway"}


@dataclass(frozen=True)
class Verdict:
    ack: bool
    stored: int = 0  # readings accepted (new rows)
    duplicates: int = 0
    rejected: int = 0  # readings refused
    reason: str | None = None  # why (part of) the message was refused
    durability: str | None = None


class MessageHandler:
    def __init__(self, settings: MqttSettings, ingest: IngestPipeline, pool: ConnectionPool, keys: KeyResolver,
                 quarantine: Quarantine, registers: RegisterMap, stopping: threading.Event,
                 max_delay: float = 5.0, idempotency: IdempotencyStore | None = None) -> None:
        self.settings = settings
        self.pool = pool
        self.ingest = ingest
        self.keys = keys
        self.quarantine = quarantine
        self.teltonika: Parser = TeltonikaParser(registers)
        self.stopping = stopping
        self.max_delay = max_delay
        self.idempotency = idempotency

    def handle(self, topic: str, payload: bytes, content_type: str | None = None,
               idempotency_key: str | None = None) -> Verdict:
        """With an Idempotency-Key (MQTT 5 user property), a re-sent message within the key's
        lifetime is acknowledged and stores nothing again, as over HTTP (backend/ingest/idempotency.py).
        The key is scoped by topic: a gateway re-sends on the topic it sent on."""
        if idempotency_key is None or self.idempotency is None:
            return self._handle(topic, payload, content_type)
        try:
            key = check_key(idempotency_key)
        except InvalidIdempotencyKey as exc:
            return self._refuse(topic, payload, str(exc))
        try:
            begun = self._retrying(self._begin, topic, key, payload)
        except IdempotencyUnavailable as exc:  # only when stopping
            return self._unacked(topic, f"idempotency store unavailable: {exc}")
        if isinstance(begun, Mismatch):
            return self._refuse(topic, payload, "Idempotency-Key: already used for a different message on this topic")
        if not isinstance(begun, Claimed):  # a Replay: the first delivery was stored
            log.info("mqtt message on %r: Idempotency-Key %r seen before; stored nothing again", topic[:200], key)
            return Verdict(ack=True, durability="replayed")
        verdict = self._handle(topic, payload, content_type)
        if verdict.ack:
            self.idempotency.finish(begun, StoredAnswer(200, b"", ""))
        else:
            self.idempotency.release(begun)
        return verdict

    def _begin(self, topic: str, key: str, payload: bytes) -> Outcome:
        begun = self.idempotency.begin("mqtt:" + topic, key, fingerprint([topic.encode(), payload]))
        if isinstance(begun, InFlight):  # another worker holds this key: wait for its answer
            raise IdempotencyUnavailable("the first delivery with this key is still being stored")
        return begun

    def _handle(self, topic: str, payload: bytes, content_type: str | None) -> Verdict:
        try:
            where = route(self.settings, topic)
            device = self._retrying(self._device, where)
        except (Unroutable, KeyRefused) as exc:
            return self._refuse(topic, payload, str(exc))
        except DATABASE_ERRORS as exc:  # only when stopping: the database never answered
            return self._unacked(topic, f"cannot look the device key up: {type(exc).__name__}")
        if where.kind == "thingsboard_attributes":
            try:
                return self._retrying(self._attributes, topic, payload, device)
            except DATABASE_ERRORS as exc:
                return self._unacked(topic, f"cannot store the attributes: {type(exc).__name__}")
        req = IngestRequest(
            body=payload, content_type=content_type or _sniff(payload), default_device=device,
            format=FORMATS.get(where.kind), parser=self.teltonika if where.kind == "teltonika" else None,
            device_guard=_only(device) if where.key_ref else None)
        try:
            outcome = self._retrying(self.ingest.run, req, transport="mqtt")
        except IngestRefused as exc:
            if exc.kind in TRANSIENT:  # only when stopping: leave it to the broker's next delivery
                return self._unacked(topic, exc.message)
            return self._refuse(topic, payload, f"{exc.kind}: {exc.message}", device)
        return self._verdict(topic, outcome)

    def _unacked(self, topic: str, reason: str) -> Verdict:
        log.info("mqtt message on %r left unacknowledged while stopping: %s", topic[:200], reason)
        return Verdict(ack=False, reason=reason)

    def _device(self, where: Route) -> str | None:
        if where.key_ref is not None:
            return self.keys.resolve(where.key_ref).device
        return where.device

    def _retrying(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """fn(...), retried with backoff while storage is temporarily unable, until stopping."""
        retrying = Retrying(retry=retry_if_exception(_transient), wait=wait_exponential_jitter(
            initial=0.05, max=self.max_delay), stop=stop_when_event_set(self.stopping), reraise=True)
        return retrying(fn, *args, **kwargs)

    def _verdict(self, topic: str, o: IngestOutcome) -> Verdict:
        reason = "; ".join(f"#{e.position}: {e.reason}" for e in o.rejected[:5]) or None
        if not o.parsed and reason is None:  # an empty payload (e.g. clearing a retained message)
            reason = "no readings in the message (empty body, or only blank and comment lines)"
        if reason:
            # The pipeline quarantines the rejected parts with the write; the log says it now.
            log.warning("mqtt message on %r: %d reading(s) refused: %s", topic[:200], o.rejected_readings, reason)
        return Verdict(ack=True, stored=o.accepted, duplicates=o.duplicates, rejected=o.rejected_readings,
                       reason=reason, durability=o.durability)

    def _attributes(self, topic: str, payload: bytes, device: str | None) -> Verdict:
        assert device is not None  # the route names it for attribute topics
        try:
            attributes = parse_attributes(payload.decode("utf-8"))
            merge_attributes(self.pool, device, attributes)
        except UnicodeDecodeError as exc:
            return self._refuse(topic, payload, f"body is not valid UTF-8 (byte {exc.start})", device)
        except (InvalidValue, DeviceError) as exc:
            return self._refuse(topic, payload, str(exc), device)
        return Verdict(ack=True, stored=len(attributes), durability="committed")

    def _refuse(self, topic: str, payload: bytes, reason: str, device: str | None = None) -> Verdict:
        self.quarantine.refuse(topic, payload, reason, device)
        return Verdict(ack=True, reason=reason)


def _transient(exc: BaseException) -> bool:
    return (isinstance(exc, DATABASE_ERRORS + (IdempotencyUnavailable,))
            or (isinstance(exc, IngestRefused) and exc.kind in TRANSIENT))


def _sniff(payload: bytes) -> str:
    """Content type of a generic message without one: JSON when it looks like it, else raw lines."""
    head = payload.lstrip()[:1]
    return "application/json" if head in (b"{", b"[") else "text/plain"


def _only(device: str | None) -> pipeline.DeviceGuard:
    """A ThingsBoard device key writes its own device only (a body naming another is refused)."""
    ident = Identity("mqtt", "mqtt device key", frozenset({"ingest"}), frozenset({device} if device else ()))
    return lambda devices: refused_devices(ident, devices)
