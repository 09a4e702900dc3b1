"""The per-worker batch buffer: thread-safe, bounded, flushed by one background thread.

Requests hand their readings over as a `Submission` and wait until the flush that carried
them is durable. Waiting requests make the flusher write at once, so concurrent requests
share one transaction (group commit); a flush also starts when BATCH_SIZE readings are
pending, every FLUSH_INTERVAL, on demand and at shutdown.

Durable means one of two things, and nothing else ever releases a waiter as a success:
  committed  the transaction carrying the readings committed in PostgreSQL;
  spooled    the batch was appended to the local write-ahead spool and fsync'd
             (spool/); the replayer (replay.py) moves it into PostgreSQL later.

A write is retried within a deadline (deadline.py). When the retries are spent the circuit
opens (circuit.py) and batches go to the spool. With the circuit open and the spool full,
`submit()` refuses at once (BufferFull -> 503) so memory stays bounded; a batch already
taken stays buffered, never acknowledged, until the database or the spool takes it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from datetime import UTC, datetime
from typing import Any

from tenacity import RetryCallState

from backend.ingest.buffer_stats import BufferStats
from backend.ingest.circuit import CircuitBreaker
from backend.ingest.deadline import DeadlineRunner, write_with_retries
from backend.ingest.faults import Faults
from backend.ingest.observers import WriteObservers
from backend.ingest.sinks import Sink, Submission, TransientSinkError, WriteResult
from backend.ingest.spool import Spool

log = logging.getLogger(__name__)


class BufferFull(RuntimeError):
    """The buffer cannot take the readings now; the client should retry after `retry_after` s."""

    def __init__(self, message: str, retry_after: int = 5) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class BatchBuffer:
    def __init__(
        self,
        sink: Sink,
        *,
        circuit: CircuitBreaker | None = None,
        spool: Spool | None = None,
        observers: WriteObservers | None = None,
        runner: DeadlineRunner | None = None,
        faults: Faults | None = None,
        batch_size: int = 500,
        max_batch_rows: int = 0,
        flush_interval: float = 1.0,
        flush_linger: float = 0.0,
        max_pending: int = 200_000,
        max_retries: int = 3,
        retry_base_delay: float = 0.2,
        retry_max_delay: float = 30.0,
        write_timeout: float = 5.0,
        probe_timeout: float = 5.0,
    ) -> None:
        """A circuit built here (none given, with `probe_timeout`) starts and stops with the buffer;
        given collaborators belong to whoever built them (WritePath)."""
        self.sink = sink
        self.batch_size = max(1, batch_size)
        # BATCH_SIZE pending readings start a flush; one flush may carry more (requests that
        # queued while the previous one was written). With 1,000-reading requests and a cap
        # of BATCH_SIZE every request was its own transaction and COPY: 5,000 measured
        # +13-28% batched readings/s and 1-2 us less PostgreSQL CPU per reading (bench.ab).
        self.max_batch_rows = max(self.batch_size, max_batch_rows)
        self.flush_interval = flush_interval
        self.flush_linger = flush_linger
        self.max_pending = max_pending
        self.max_retries = max(1, max_retries)
        self.retry_base_delay = retry_base_delay
        self.retry_max_delay = retry_max_delay
        self.write_timeout = write_timeout
        self.spool = spool
        self.observers = observers if observers is not None else WriteObservers()
        self.faults = faults if faults is not None else Faults()
        self.stats = BufferStats()
        self.runner = runner if runner is not None else DeadlineRunner()
        self._owns_circuit = circuit is None
        self.circuit = circuit if circuit is not None else CircuitBreaker(
            sink.ping, self.runner, base_delay=retry_base_delay, max_delay=retry_max_delay,
            probe_timeout=probe_timeout)
        self._queue: deque[Submission] = deque()
        self._pending_rows = 0
        self._waiters = 0
        self._in_flight = 0
        self._flush_gen = 0
        self._flush_requested = False
        self._closing = False
        self._closed = False
        # One lock, two wait lists, so a request wakes only the thread that needs it: with
        # one shared Condition every submit woke the flusher and the probe thread alike, and
        # those wake-ups were the largest single CPU cost of a request (py-spy, --gil).
        self._cond = threading.Condition()  # the flusher waits here for work
        self._idle = threading.Condition(self._cond)  # flush() and the replayer wait for flushes
        self._flusher_waiting = False  # the flusher sleeps until a flush is due
        self._last_batch_len = 0  # submissions in the previous flush: is there concurrent load?
        self._thread: threading.Thread | None = None
        self.circuit.subscribe(self._circuit_changed)

    # ---- producer side -------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="batch-flusher", daemon=True)
            self._thread.start()
            if self._owns_circuit:
                self.circuit.start()

    def submit(self, sub: Submission) -> Submission:
        rows = len(sub.readings)
        with self._cond:
            if self._closing:
                raise BufferFull("shutting down", retry_after=2)
            if self.circuit.is_open and rows and (self.spool is None or not self.spool.accepts(rows)):
                self.stats.refused += rows
                why = self.spool.refusal_reason() if self.spool is not None else "no spool configured"
                raise BufferFull(f"database unreachable ({self.circuit.reason[:120]}) and {why or 'spool busy'}",
                                 retry_after=self.retry_after_hint())
            if self._pending_rows + rows > self.max_pending and self._pending_rows > 0:
                raise BufferFull(f"{self._pending_rows} readings already pending", retry_after=2)
            self._queue.append(sub)
            self._pending_rows += rows
            if self._pending_rows >= self.batch_size:
                self._cond.notify()  # ends an idle wait or a linger: the batch is full
        return sub

    def wait(self, sub: Submission, timeout: float) -> bool:
        """Block until the submission's write ended (True) or `timeout` passed (False)."""
        if sub.done.is_set():
            return True
        with self._cond:
            self._waiters += 1
            if self._flusher_waiting:
                self._cond.notify()  # a lingering or busy flusher picks this up on its own
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
                if remaining <= 0 or self._thread is None or not self._thread.is_alive():
                    return False
                self._idle.wait(min(remaining, 0.5))
        return True

    def close(self, timeout: float = 30.0) -> bool:
        """Flush what is pending (to PostgreSQL or the spool) and stop the flusher.

        The spool, a given circuit and the replayer belong to whoever built them: WritePath.close().
        """
        with self._cond:
            if self._closed:
                return True
        if self.circuit.is_open and (self.spool is None or not self.spool.accepts(max(1, self._pending_rows))):
            timeout = min(timeout, 1.0)  # nowhere durable to put them: do not hold the shutdown
        ok = self.flush(timeout)
        with self._cond:
            self._closing = True
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._owns_circuit:
            self.circuit.stop(timeout=1)
        for sub in list(self._queue):  # never acknowledged: their requests get a 503, the client keeps the data
            if not sub.done.is_set():
                sub.finish("failed", "shutting down while the database is unreachable; not stored")
        return ok

    def sink_available(self) -> bool:
        """False while the circuit is open (the database is known to be unreachable)."""
        return not self.circuit.is_open

    def retry_after_hint(self) -> int:
        """Seconds a refused client should wait: until the next probe while the circuit is open."""
        return self.circuit.retry_after_hint()

    def status(self) -> dict[str, Any]:
        with self._cond:
            pending = self._pending_rows
            oldest = self._queue[0].received_at if self._queue else None
        now = datetime.now(UTC)
        return {
            "pending_records": pending,
            "batch_size": self.batch_size,
            "batch_full": pending >= self.batch_size,
            "max_pending": self.max_pending,
            "oldest_pending_age_s": round((now - oldest).total_seconds(), 3) if oldest else 0.0,
            **self.stats.totals(),
            "worker_pid": os.getpid(),
            "circuit": self.circuit_status(),
        }

    def circuit_status(self) -> dict[str, Any]:
        state = self.circuit.status()
        outages = state.pop("outages")
        return {**state, "write_timeout_s": self.write_timeout, "outages": outages}

    @property
    def pending_rows(self) -> int:
        return self._pending_rows

    def report_sink_failure(self, message: str) -> None:
        """Another writer (the replayer, /health) found the database unreachable: open the circuit."""
        self._record_error(message)
        self.circuit.open(message)

    def _circuit_changed(self, is_open: bool) -> None:
        with self._cond:
            self._cond.notify_all()  # an idle, lingering or holding flusher re-checks where to write

    def yield_to_live(self, max_wait: float = 2.0) -> None:
        """Let at least one live flush go first when live readings are waiting."""
        with self._cond:
            if not (self._queue or self._in_flight) or self._closing:
                return
            gen = self._flush_gen
            self._idle.wait_for(lambda: self._flush_gen != gen or not (self._queue or self._in_flight)
                                or self._closing, timeout=max_wait)

    # ---- flusher side --------------------------------------------------------------

    def _should_flush(self, now: float) -> bool:
        if not self._queue:
            return False
        if self._waiters or self._flush_requested or self._closing or self._pending_rows >= self.batch_size:
            return True
        age = (datetime.now(UTC) - self._queue[0].received_at).total_seconds()
        return age >= self.flush_interval

    def _linger(self) -> None:
        # Group commit only pays when a commit carries many requests: with single-reading
        # requests a flush's fixed cost (round trip, transaction) dominated and only 1-2
        # requests shared it (docs/benchmarks.md). Waiting a few ms for the requests already
        # being parsed costs that much latency and saves most of the per-flush work.
        if self.flush_linger <= 0 or self._flush_requested or self._closing or self.circuit.is_open:
            return
        if len(self._queue) <= 1 and self._last_batch_len <= 1:
            return  # one request at a time (a lone gateway): nobody to wait for, so no added latency
        deadline = time.monotonic() + self.flush_linger
        while self._pending_rows < self.batch_size and not self._closing:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._cond.wait(remaining)

    def _take(self) -> list[Submission]:
        batch: list[Submission] = []
        rows = 0
        # Whole submissions only, so one request's readings commit in one transaction.
        while self._queue and (not batch or rows + len(self._queue[0].readings) <= self.max_batch_rows):
            sub = self._queue.popleft()
            batch.append(sub)
            rows += len(sub.readings)
        self._pending_rows -= rows
        self._in_flight = rows
        self._last_batch_len = len(batch)
        return batch

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._should_flush(time.monotonic()):
                    if self._closing and not self._queue:
                        return
                    self._flusher_waiting = True
                    try:
                        self._cond.wait(timeout=min(self.flush_interval, 0.25))
                    finally:
                        self._flusher_waiting = False
                self._linger()
                batch = self._take()
            held = False
            try:
                held = self._write_batch(batch)
            except Exception as exc:  # noqa: BLE001 - the flusher must outlive any single bug
                log.exception("flusher: unexpected error; the batch's requests get a 503")
                self._fail(batch, f"internal error while storing: {type(exc).__name__}")
            finally:
                with self._cond:
                    self._in_flight = 0
                    self._flush_gen += 1
                    if not self._queue:
                        self._flush_requested = False
                    self._idle.notify_all()
            if held:
                with self._cond:
                    if self._closing:
                        return  # shutting down with nowhere to put them: close() answers the requests
                    # Until the database is back (or, each second, the spool has room again).
                    self._cond.wait_for(lambda: self._closing or not self.circuit.is_open, timeout=1.0)

    def _write_batch(self, batch: list[Submission]) -> bool:
        """Write, spool or hold the batch; True when it was held (nowhere durable to put it)."""
        rows = sum(len(s.readings) for s in batch)
        if self.circuit.is_open:
            return self._divert(batch, rows, self.circuit.reason)
        started = time.monotonic()
        try:
            result = write_with_retries(self.runner, self.sink.write, batch, attempts=self.max_retries,
                                        within=self.write_timeout, base_delay=self.retry_base_delay,
                                        max_delay=self.retry_max_delay, before_sleep=self._before_retry)
        except TransientSinkError as exc:
            self.report_sink_failure(str(exc))
            return self._divert(batch, rows, str(exc))
        except Exception as exc:  # noqa: BLE001 - the data was refused; find which request
            log.warning("write refused (%s: %s); writing the batch's requests one by one",
                        type(exc).__name__, str(exc)[:200])
            return self._write_one_by_one(batch)
        self._committed(batch, result, rows, started)
        return False

    def _committed(self, batch: list[Submission], result: WriteResult, rows: int, started: float) -> None:
        self.stats.committed(result, rows, (time.monotonic() - started) * 1000)
        self.faults.hit("after_live_commit")
        for sub in batch:
            sub.committed(result)
        self.observers.notify(batch, result)

    def _write_one_by_one(self, batch: list[Submission]) -> bool:
        for i, sub in enumerate(batch):
            rows = len(sub.readings)
            started = time.monotonic()
            try:
                result = self.runner.run(self.sink.write, [sub], timeout=self.write_timeout)
            except TransientSinkError as exc:
                self.circuit.open(str(exc))
                rest = batch[i:]
                return self._divert(rest, sum(len(s.readings) for s in rest), str(exc))
            except Exception as exc:  # noqa: BLE001 - this request's data cannot be stored
                log.error("request %s refused by the database: %s", sub.request_id, exc)
                self._record_error(f"refused: {exc}")
                self._fail([sub], f"the database refused the data: {str(exc)[:200]}")
            else:
                self._committed([sub], result, rows, started)
        return False

    def _divert(self, batch: list[Submission], rows: int, why: str) -> bool:
        """The database cannot take the batch now: spool it (durable), else hold it; True if held."""
        if self.spool is not None:
            try:
                self.spool.append(batch)
            except Exception as exc:  # noqa: BLE001 - SpoolFull, or an I/O error: never acknowledge
                reason = f"database unavailable ({why[:160]}) and {exc}"
            else:
                self.faults.hit("after_spool_append")
                self.stats.spooled += rows
                for sub in batch:
                    sub.finish("spooled")
                return False
        else:
            reason = f"database unavailable ({why[:160]}) and no spool is configured"
        # Durable nowhere: not acknowledged. The waiting requests get 503 + Retry-After at their
        # ACK_TIMEOUT (new ones at once, in submit()); the readings stay buffered, within
        # BUFFER_MAX_READINGS, and are written when the database or the spool can take them.
        self.stats.error(reason, attempt=False)
        self._requeue(batch)
        return True

    def _requeue(self, batch: list[Submission]) -> None:
        with self._cond:
            self._queue.extendleft(reversed(batch))
            self._pending_rows += sum(len(s.readings) for s in batch)

    def _fail(self, batch: list[Submission], reason: str) -> None:
        self.stats.failed += sum(len(s.readings) for s in batch)
        for sub in batch:
            if not sub.done.is_set():
                sub.finish("failed", reason)

    def _before_retry(self, state: RetryCallState) -> None:
        self.stats.retried += 1
        exc = state.outcome.exception() if state.outcome else None
        self._record_error(str(exc) if exc else "write failed")

    def _record_error(self, message: str) -> None:
        self.stats.error(message)
        log.warning("flush failed: %s", message[:200])
