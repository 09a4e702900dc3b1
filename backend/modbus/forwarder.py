"""Store and forward: every poll record goes to an on-disk queue first, a sender thread
drains it to the ingest API in order.

Why always through the disk (not only when the API is down): one path is easier to get
right than two, order is simply the queue order, and a crash at any moment loses at
most the poll in flight. The cost is one small fsync'd SQLite write per poll.

Delivery rules (see docs/modbus.md):
- 2xx                -> the batch is deleted from the queue (only now: at-least-once;
                        the API is idempotent on (device_id, metric, ts), so a resend
                        after a crash between 2xx and delete is harmless);
                        records listed in the answer's "rejected" are copied to the
                        dead-letter table with the reason.
- 400/413/415/422    -> bad payload: the batch is halved until the offending record is
  (other 4xx)           alone, and that record is moved to the dead-letter table.
- 401/403/404/405    -> configuration problem (key, URL): logged loudly, kept, retried
                        slowly (`auth_retry`). Data is never dead-lettered because of it.
- 408/429/5xx/network-> retried with exponential backoff, honouring Retry-After.
"""

from __future__ import annotations

import json
import logging
import math
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import requests

from . import __version__
from .backoff import Backoff
from .queue import MAX_STORED_RESPONSE, DiskQueue, QueuedRecord

log = logging.getLogger(__name__)

RETRYABLE = {408, 425, 429}
CONFIG_PROBLEM = {401, 403, 404, 405}


@dataclass(frozen=True)
class SendOutcome:
    """What one send attempt did; `delay` is how long the sender should wait next."""

    kind: str  # "empty" | "sent" | "retry" | "dead" | "split"
    count: int = 0
    status: int | None = None
    delay: float = 0.0
    detail: str = ""


class Forwarder:
    """Drains a DiskQueue to the ingest API; `submit` is the poller's sink."""

    def __init__(
        self,
        queue: DiskQueue,
        endpoint: str,
        api_key: str,
        *,
        batch_size: int = 200,
        timeout: float = 10.0,
        verify_tls: bool | str = True,
        retry_min: float = 1.0,
        retry_max: float = 300.0,
        auth_retry: float = 300.0,
        session: requests.Session | None = None,
    ) -> None:
        self.queue = queue
        self.endpoint = endpoint
        self.batch_size = batch_size
        self.timeout = timeout
        self.retry_min = retry_min
        self.retry_max = retry_max
        self._backoff = Backoff(retry_min, retry_max)
        self.auth_retry = auth_retry
        self.session = session or requests.Session()
        self.session.headers.update(
            {
                "X-API-Key": api_key,
                "Content-Type": "application/json",
                "User-Agent": f"fluxio-modbus/{__version__}",
            }
        )
        self.session.verify = verify_tls
        self._limit = batch_size
        self._split_end: int | None = None  # last queue id of the batch being bisected
        self._failures = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.sent = 0
        self.last_outcome: SendOutcome | None = None

    # -- the poller's sink ------------------------------------------------------------

    def submit(self, records: list[dict[str, Any]]) -> None:
        self.queue.put(records)
        self._wake.set()

    # -- one attempt ------------------------------------------------------------------

    def send_once(self) -> SendOutcome:
        """Send the oldest batch once and act on the answer (no sleeping here)."""
        batch = self.queue.peek(self._limit)
        if not batch:
            return SendOutcome("empty")
        body = "[" + ",".join(r.payload for r in batch) + "]"
        try:
            response = self.session.post(self.endpoint, data=body.encode(), timeout=self.timeout)
        except requests.RequestException as exc:
            return self._retry(None, f"{describe_request_error(exc)} at {self.endpoint}", None)
        status = response.status_code
        if 200 <= status < 300:
            self._failures = 0
            self._handle_rejected(batch, response)
            self.queue.ack([r.id for r in batch])
            self.sent += len(batch)
            if self._split_end is not None and batch[-1].id >= self._split_end:
                # Past the batch that was refused without finding a bad record: full size again.
                self._split_end = None
                self._limit = self.batch_size
            return SendOutcome("sent", len(batch), status)
        text = _response_text(response)
        if status in RETRYABLE or status >= 500:
            return self._retry(status, text, response.headers.get("Retry-After"))
        if status in CONFIG_PROBLEM:
            log.error(
                "ingest API answered %d for %s - check api_key / url; %d record(s) stay queued, retrying in %.0fs: %s",
                status,
                self.endpoint,
                len(self.queue),
                self.auth_retry,
                text[:200],
            )
            return SendOutcome("retry", 0, status, self.auth_retry, text)
        # Any other 4xx: the payload is the problem and resending it cannot help.
        if len(batch) > 1:
            # Bisect: the smaller half is retried first; its successes are delivered and
            # the refusal narrows down to the one record that cannot be accepted.
            self._split_end = batch[-1].id if self._split_end is None else self._split_end
            self._limit = max(1, len(batch) // 2)
            log.warning("ingest API answered %d for %d records; splitting to find the bad one", status, len(batch))
            return SendOutcome("split", len(batch), status, 0.0, text)
        self.queue.dead_letter(batch, status, text)
        self._split_end = None
        self._limit = self.batch_size
        log.error(
            "ingest API rejected a record with %d, moved to dead letters: %s | %s",
            status,
            text[:200],
            batch[0].payload[:200],
        )
        return SendOutcome("dead", 1, status, 0.0, text)

    def _retry(self, status: int | None, text: str, retry_after: str | None) -> SendOutcome:
        self._failures += 1
        delay = self._backoff.delay(self._failures)
        hinted = _parse_retry_after(retry_after)
        if hinted is not None:
            delay = min(self.retry_max, max(delay, hinted))
        level = logging.WARNING if self._failures in (1, 2) or self._failures % 20 == 0 else logging.DEBUG
        log.log(
            level,
            "ingest API unavailable (%s); %d record(s) queued, retry %d in %.1fs",
            status if status is not None else text[:500],
            len(self.queue),
            self._failures,
            delay,
        )
        return SendOutcome("retry", 0, status, delay, text)

    def _handle_rejected(self, batch: list[QueuedRecord], response: requests.Response) -> None:
        try:
            answer = response.json()
        except ValueError:
            return
        rejected = answer.get("rejected") if isinstance(answer, dict) else None
        if not isinstance(rejected, list) or not rejected:
            return
        copies: list[tuple[QueuedRecord, str]] = []
        for item in rejected:
            position = item.get("position") if isinstance(item, dict) else None
            reason = json.dumps(item)[:MAX_STORED_RESPONSE]
            if isinstance(position, int) and 0 <= position < len(batch):
                copies.append((batch[position], reason))
        for record, reason in copies:
            self.queue.dead_letter([record], response.status_code, reason, remove=False)
        log.error(
            "ingest API accepted the batch but rejected %d record(s): %s", len(rejected), json.dumps(rejected)[:300]
        )

    # -- the loop ---------------------------------------------------------------------

    def run(self) -> None:
        """Send until stopped; sleeps only between attempts, wakes on new records."""
        delay = 0.0
        while not self._stop.is_set():
            if delay > 0:
                # A submit during a backoff must not cut the backoff short: only stop does.
                if self._stop.wait(delay):
                    break
            try:
                outcome = self.send_once()
            except Exception:  # noqa: BLE001 - the sender must outlive surprises
                log.exception("forwarder: unexpected error")
                outcome = SendOutcome("retry", delay=self.retry_min)
            self.last_outcome = outcome
            if outcome.kind == "empty":
                self._wake.wait(1.0)
                self._wake.clear()
                delay = 0.0
            else:
                delay = outcome.delay

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="modbus-forwarder", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def flush(self, timeout: float) -> bool:
        """Send until the queue is empty or the API refuses; for `run --once`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            outcome = self.send_once()
            if outcome.kind == "empty":
                return True
            if outcome.kind == "retry":
                if outcome.delay > deadline - time.monotonic():
                    return False
                time.sleep(outcome.delay)
        return len(self.queue) == 0


def describe_request_error(exc: BaseException) -> str:
    """The cause of a failed request in a few words, e.g. "connection refused".

    str() of a requests error is urllib3's nested repr ("HTTPConnectionPool(...): Max
    retries exceeded ... (Caused by NewConnectionError(...))"), too long to log in full
    and meaningless cut short; the innermost exception is what an installer can act on.
    """
    inner = _innermost(exc)
    if isinstance(inner, ConnectionRefusedError):
        return "connection refused"
    if isinstance(inner, ConnectionResetError):
        return "connection reset by the server"
    if isinstance(inner, socket.gaierror):
        host = getattr(getattr(exc, "request", None), "url", None)
        host = urlsplit(host).hostname if host else None
        return f"cannot resolve host {host!r} ({inner.strerror or inner})" if host else f"cannot resolve host ({inner})"
    if isinstance(inner, TimeoutError) or isinstance(exc, requests.Timeout):
        return "timed out while connecting" if isinstance(exc, requests.ConnectTimeout) else "timed out"
    if isinstance(inner, ssl.SSLError):
        return f"TLS error: {inner.reason or inner}"
    if isinstance(inner, OSError) and inner.strerror:
        return inner.strerror.lower()
    return f"{type(inner).__name__}: {inner}"


def _innermost(exc: BaseException) -> BaseException:
    # requests wraps urllib3's MaxRetryError (in args), which keeps the connection error
    # in .reason, which was raised from the socket's OSError (__cause__).
    seen = {id(exc)}
    while True:
        wrapped = [a for a in getattr(exc, "args", ()) if isinstance(a, BaseException)]
        links = (exc.__cause__, getattr(exc, "reason", None), *wrapped, exc.__context__)
        nxt = next((e for e in links if isinstance(e, BaseException) and id(e) not in seen), None)
        if nxt is None:
            return exc
        seen.add(id(nxt))
        exc = nxt


def _response_text(response: requests.Response) -> str:
    try:
        return " ".join(response.text.split())[:MAX_STORED_RESPONSE]
    except Exception:  # noqa: BLE001 - undecodable body
        return ""


def _parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)
