"""The per-worker batch buffer: thread-safe, bounded, flushed by one background thread.

Requests hand their readings over as a `Submission` and (for a durable acknowledgement)
wait until the flush that carried them has committed. Waiting requests make the flusher
write at once, so concurrent requests share one transaction (group commit); a flush also
starts when BATCH_SIZE readings are pending, every FLUSH_INTERVAL, on demand and at
shutdown. A failed write is retried with exponential backoff and jitter; the readings stay
buffered (or go to the spool, when one is configured) and are never dropped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from .sinks import Sink, Submission, TransientSinkError, WriteResult

log = logging.getLogger(__name__)


class BufferFull(RuntimeError):
    """More readings are pending than the buffer may hold; the client should retry later."""


@dataclass
class BufferStats:
    written: int = 0
    duplicates: int = 0
    quarantined: int = 0
    failed_attempts: int = 0
    retried: int = 0
    flushes: int = 0
    spooled: int = 0
    last_flush_at: datetime | None = None
    last_flush_rows: int = 0
    last_flush_ms: float = 0.0
    last_error: str | None = None
    last_error_at: datetime | None = None


class BatchBuffer:
    def __init__(
        self,
        sink: Sink,
        *,
        batch_size: int = 500,
        flush_interval: float = 1.0,
        max_pending: int = 200_000,
        max_retries: int = 3,
        retry_base_delay: float = 0.2,
        retry_max_delay: float = 30.0,
        spool: Any = None,
        on_written: Callable[[list[Submission], WriteResult], None] | None = None,
    ) -> None:
        self.sink = sink
        self.batch_size = max(1, batch_size)
        self.flush_interval = flush_interval
        self.max_pending = max_pending
        self.max_retries = max(1, max_retries)
        self.retry_base_delay = retry_base_delay
        self.retry_max_delay = retry_max_delay
        self.spool = spool
        self.on_written = on_written
        self.stats = BufferStats()
        self._queue: deque[Submission] = deque()
        self._pending_rows = 0
        self._waiters = 0
        self._in_flight = 0
        self._flush_requested = False
        self._closing = False
        self._cond = threading.Condition()
        self._idle = threading.Condition(self._cond)
        self._thread: threading.Thread | None = None
        self._outage_delay = 0.0

    # ---- producer side -------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="batch-flusher", daemon=True)
            self._thread.start()

    def submit(self, sub: Submission) -> Submission:
        rows = len(sub.readings)
        with self._cond:
            if self._closing:
                raise BufferFull("shutting down")
            if self._pending_rows + rows > self.max_pending and self._pending_rows > 0:
                raise BufferFull(f"{self._pending_rows} readings already pending")
            self._queue.append(sub)
            self._pending_rows += rows
            self._cond.notify_all()
        return sub

    def wait(self, sub: Submission, timeout: float) -> bool:
        """Block until the submission's write ended (True) or `timeout` passed (False)."""
        if sub.done.is_set():
            return True
        with self._cond:
            self._waiters += 1
            self._cond.notify_all()
        try:
            return sub.done.wait(timeout)
        finally:
            with self._cond:
                self._waiters -= 1

    def flush(self, timeout: float = 30.0) -> bool:
        """Write everything pending now; True when the buffer emptied in time."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._flush_requested = True
            self._cond.notify_all()
            while self._queue or self._in_flight:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._idle.wait(remaining)
        return True

    def close(self, timeout: float = 30.0) -> bool:
        """Flush what is pending and stop the flusher (graceful shutdown)."""
        ok = self.flush(timeout)
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)
        return ok

    def status(self) -> dict[str, Any]:
        with self._cond:
            pending = self._pending_rows
            oldest = self._queue[0].received_at if self._queue else None
        s = self.stats
        now = datetime.now(UTC)
        return {
            "pending_records": pending + self._in_flight,  # not yet written, in flight included
            "batch_size": self.batch_size,
            "batch_full": pending >= self.batch_size,
            "max_pending": self.max_pending,
            "oldest_pending_age_s": round((now - oldest).total_seconds(), 3) if oldest else 0.0,
            "written_total": s.written,
            "duplicates_total": s.duplicates,
            "quarantined_total": s.quarantined,
            "failed_attempts_total": s.failed_attempts,
            "retried_total": s.retried,
            "spooled_total": s.spooled,
            "flushes_total": s.flushes,
            "last_flush_at": s.last_flush_at.isoformat() if s.last_flush_at else None,
            "last_flush_rows": s.last_flush_rows,
            "last_flush_ms": round(s.last_flush_ms, 2),
            "last_error": s.last_error,
            "last_error_at": s.last_error_at.isoformat() if s.last_error_at else None,
        }

    @property
    def pending_rows(self) -> int:
        return self._pending_rows

    # ---- flusher side --------------------------------------------------------------

    def _should_flush(self, now: float) -> bool:
        if not self._queue:
            return False
        if self._waiters or self._flush_requested or self._closing:
            return True
        if self._pending_rows >= self.batch_size:
            return True
        age = (datetime.now(UTC) - self._queue[0].received_at).total_seconds()
        return age >= self.flush_interval

    def _take(self) -> list[Submission]:
        batch: list[Submission] = []
        rows = 0
        # Whole submissions only, so one request's readings commit in one transaction.
        while self._queue and (not batch or rows + len(self._queue[0].readings) <= self.batch_size):
            sub = self._queue.popleft()
            batch.append(sub)
            rows += len(sub.readings)
        self._pending_rows -= rows
        self._in_flight = rows
        return batch

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._should_flush(time.monotonic()):
                    if self._closing and not self._queue:
                        return
                    self._cond.wait(timeout=min(self.flush_interval, 0.25))
                batch = self._take()
            try:
                self._write_batch(batch)
            except Exception:  # noqa: BLE001 - the flusher must outlive any single bug
                log.exception("flusher: unexpected error; batch returned to the buffer")
                self._requeue(batch)
            finally:
                with self._cond:
                    self._in_flight = 0
                    if not self._queue:
                        self._flush_requested = False
                    self._idle.notify_all()

    def _write_batch(self, batch: list[Submission]) -> None:
        started = time.monotonic()
        rows = sum(len(s.readings) for s in batch)
        try:
            result = self._write_with_retries(batch)
        except TransientSinkError as exc:
            self._record_error(str(exc))
            if self.spool is not None and self.spool.accepts(rows):
                self.spool.append(batch)
                self.stats.spooled += rows
                for sub in batch:
                    sub.finish("spooled")
                return
            self._requeue(batch)
            self._sleep_outage()
            return
        self._outage_delay = 0.0
        s = self.stats
        s.flushes += 1
        s.written += result.inserted
        s.duplicates += result.duplicates
        s.quarantined += result.quarantined
        s.last_flush_at = datetime.now(UTC)
        s.last_flush_rows = rows
        s.last_flush_ms = (time.monotonic() - started) * 1000
        for sub in batch:
            ins, quar = result.per_request.get(sub.request_id, (None, 0))
            sub.inserted = ins
            sub.quarantined = quar
            sub.duplicates = None if ins is None else len(sub.readings) - ins - quar
            sub.finish("committed")
        if self.on_written is not None:
            try:
                self.on_written(batch, result)
            except Exception:  # noqa: BLE001 - observers must not undo a committed write
                log.exception("on_written observer failed")

    def _write_with_retries(self, batch: list[Submission]) -> WriteResult:
        retrying = Retrying(
            stop=stop_after_attempt(self.max_retries),
            wait=wait_random_exponential(multiplier=self.retry_base_delay, max=self.retry_max_delay),
            retry=retry_if_exception_type(TransientSinkError),
            reraise=True,
            before_sleep=self._before_retry,
        )
        return retrying(self.sink.write, batch)

    def _before_retry(self, state: Any) -> None:
        self.stats.retried += 1
        exc = state.outcome.exception() if state.outcome else None
        self._record_error(str(exc) if exc else "write failed")

    def _record_error(self, message: str) -> None:
        self.stats.failed_attempts += 1
        self.stats.last_error = message[:500]
        self.stats.last_error_at = datetime.now(UTC)
        log.warning("flush failed: %s", message[:200])

    def _requeue(self, batch: list[Submission]) -> None:
        with self._cond:
            self._queue.extendleft(reversed(batch))
            self._pending_rows += sum(len(s.readings) for s in batch)

    def _sleep_outage(self) -> None:
        # Between retry rounds the pause keeps doubling (with a cap) so a long outage
        # does not turn into a tight reconnect loop.
        import random

        self._outage_delay = min(self.retry_max_delay, max(self.retry_base_delay, self._outage_delay * 2))
        delay = random.uniform(self._outage_delay / 2, self._outage_delay)
        with self._cond:
            self._cond.wait_for(lambda: self._closing, timeout=delay)
