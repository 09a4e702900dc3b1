"""The per-worker batch buffer: thread-safe, bounded, flushed by one background thread.

Requests hand their readings over as a `Submission` and wait until the flush that carried
them is durable. Waiting requests make the flusher write at once, so concurrent requests
share one transaction (group commit); a flush also starts when BATCH_SIZE readings are
pending, every FLUSH_INTERVAL, on demand and at shutdown.

Durable means one of two things, and nothing else ever releases a waiter as a success:
  committed  the transaction carrying the readings committed in PostgreSQL;
  spooled    the batch was appended to the local write-ahead spool and fsync'd
             (see spool.py); the replayer (replay.py) moves it into PostgreSQL later.

A write is retried a few times (tenacity: exponential backoff with jitter) within a
deadline (`write_timeout`, half of ACK_TIMEOUT), each attempt itself bounded by that
deadline, so a database that hangs cannot hold requests. When the retries are spent the
circuit opens: from then on batches go straight to the spool without touching the
database, and a probe thread pings it with exponential backoff, jitter and a cap
(RETRY_BASE_DELAY, RETRY_MAX_DELAY). The first successful ping closes the circuit. With
the circuit open and the spool unable to take more (full, nearly full disk, disabled),
`submit()` refuses at once (BufferFull -> 503 + Retry-After) so memory stays bounded; a
batch already taken stays buffered (never acknowledged: its requests get 503 at
ACK_TIMEOUT) and is written when the database or the spool can take it.
"""

from __future__ import annotations

import logging
import os
import queue
import random
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tenacity import Retrying, retry_if_exception, stop_after_attempt, stop_after_delay, wait_random_exponential

from backend.ingest import faults
from backend.ingest.sinks import Sink, Submission, TransientSinkError, WriteResult

log = logging.getLogger(__name__)


class BufferFull(RuntimeError):
    """The buffer cannot take the readings now; the client should retry after `retry_after` s."""

    def __init__(self, message: str, retry_after: int = 5) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class WriteTimeout(TransientSinkError):
    """A sink call did not finish within its deadline (it may still finish later)."""


@dataclass
class BufferStats:
    written: int = 0
    duplicates: int = 0
    quarantined: int = 0
    failed_attempts: int = 0
    retried: int = 0
    flushes: int = 0
    flushes_by_method: dict[str, int] = field(default_factory=dict)
    spooled: int = 0
    refused: int = 0
    failed: int = 0
    last_flush_at: datetime | None = None
    last_flush_rows: int = 0
    last_flush_ms: float = 0.0
    last_error: str | None = None
    last_error_at: datetime | None = None


class DeadlineRunner:
    """Runs sink calls on daemon threads so the caller can stop waiting after a deadline.

    A call that overruns keeps its thread until the driver gives up (the pool's and the
    socket's own timeouts); at most `max_threads` such threads exist.
    """

    def __init__(self, max_threads: int = 8, name: str = "sink-call") -> None:
        self.max_threads = max_threads
        self.name = name
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._idle = 0

    def run(self, fn: Callable[..., Any], *args: Any, timeout: float) -> Any:
        fut: Future = Future()
        with self._lock:
            if self._idle == 0 and self._threads < self.max_threads:
                self._threads += 1
                threading.Thread(target=self._work, name=f"{self.name}-{self._threads}", daemon=True).start()
        self._jobs.put((fut, fn, args))
        try:
            return fut.result(timeout=max(0.001, timeout))
        except FutureTimeout:
            fut.cancel()
            raise WriteTimeout(f"{getattr(fn, '__name__', 'sink call')} did not finish within {timeout:.1f}s"
                               " (database slow or unreachable)") from None

    def _work(self) -> None:
        while True:
            with self._lock:
                self._idle += 1
            fut, fn, args = self._jobs.get()
            with self._lock:
                self._idle -= 1
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn(*args))
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller
                fut.set_exception(exc)


class GuardedPool:
    """A connection pool view for request-path helpers (the field catalogue).

    While the circuit is open it fails at once instead of waiting for a connection that
    cannot come; otherwise it caps the wait, so a request is never held by the pool. A
    failure to get any connection at all (the pool has none) opens the circuit, so a
    worker that boots during an outage finds out with its first request.
    """

    def __init__(self, pool: Any, buffer: BatchBuffer, max_wait: float = 2.0) -> None:
        self._pool = pool
        self._buffer = buffer
        self._max_wait = max_wait

    @contextmanager
    def connection(self, timeout: float | None = None, **kw: Any) -> Iterator[Any]:
        import psycopg

        if not self._buffer.sink_available():
            raise psycopg.OperationalError("database known to be unreachable (circuit open)")
        cm = self._pool.connection(timeout=min(timeout or self._max_wait, self._max_wait), **kw)
        try:
            conn = cm.__enter__()
        except psycopg.OperationalError as exc:
            if self._pool.get_stats().get("pool_size", 1) == 0:
                self._buffer.report_sink_failure(f"no database connection: {exc}")
            raise
        try:
            yield conn
        except BaseException:
            if not cm.__exit__(*sys.exc_info()):
                raise
        else:
            cm.__exit__(None, None, None)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, TransientSinkError) and not isinstance(exc, WriteTimeout)


class BatchBuffer:
    def __init__(
        self,
        sink: Sink,
        *,
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
        spool: Any = None,
        on_written: Callable[[list[Submission], WriteResult], None] | None = None,
    ) -> None:
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
        self.probe_timeout = probe_timeout
        self.spool = spool
        self.replayer: Any = None
        self.on_written = on_written
        self.stats = BufferStats()
        self.runner = DeadlineRunner()
        self._queue: deque[Submission] = deque()
        self._pending_rows = 0
        self._waiters = 0
        self._in_flight = 0
        self._flush_gen = 0
        self._flush_requested = False
        self._closing = False
        self._closed = False
        # One lock, three wait lists, so a request wakes only the thread that needs it: with
        # one shared Condition every submit woke the flusher and the probe thread alike, and
        # those wake-ups were the largest single CPU cost of a request (py-spy, --gil).
        self._cond = threading.Condition()  # the flusher waits here for work
        self._idle = threading.Condition(self._cond)  # flush() and the replayer wait for flushes
        self._circuit = threading.Condition(self._cond)  # the probe thread waits for the circuit
        self._flusher_waiting = False  # the flusher sleeps until a flush is due
        self._last_batch_len = 0  # submissions in the previous flush: is there concurrent load?
        self._thread: threading.Thread | None = None
        self._probe_thread: threading.Thread | None = None
        # circuit breaker
        self._open = False
        self._open_reason = ""
        self._opened_at: datetime | None = None
        self._opened_mono = 0.0
        self._probe_attempt = 0
        self._next_probe_mono = 0.0
        self._outages: deque[dict[str, Any]] = deque(maxlen=5)
        self.sink_ok = threading.Event()
        self.sink_ok.set()

    # ---- producer side -------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="batch-flusher", daemon=True)
            self._thread.start()
            self._probe_thread = threading.Thread(target=self._probe_loop, name="sink-probe", daemon=True)
            self._probe_thread.start()
            if self.replayer is not None:
                self.replayer.start()

    def submit(self, sub: Submission) -> Submission:
        rows = len(sub.readings)
        with self._cond:
            if self._closing:
                raise BufferFull("shutting down", retry_after=2)
            if self._open and rows and (self.spool is None or not self.spool.accepts(rows)):
                self.stats.refused += rows
                why = self.spool.refusal_reason() if self.spool is not None else "no spool configured"
                raise BufferFull(f"database unreachable ({self._open_reason[:120]}) and {why or 'spool busy'}",
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
        """Flush what is pending (to PostgreSQL or the spool), stop the threads, release the spool."""
        with self._cond:
            if self._closed:
                return True
        if self._open and (self.spool is None or not self.spool.accepts(max(1, self._pending_rows))):
            timeout = min(timeout, 1.0)  # nowhere durable to put them: do not hold the shutdown
        ok = self.flush(timeout)
        if self.replayer is not None:
            self.replayer.stop(timeout=min(10.0, timeout))
        with self._cond:
            self._closing = True
            self._closed = True
            self._cond.notify_all()
            self._circuit.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._probe_thread is not None:
            self._probe_thread.join(timeout=1)
        with self._cond:
            left = list(self._queue)
        for sub in left:  # never acknowledged: their requests get a 503, the client keeps the data
            if not sub.done.is_set():
                sub.finish("failed", "shutting down while the database is unreachable; not stored")
        if self.spool is not None:
            self.spool.close()
        return ok

    def sink_available(self) -> bool:
        """False while the circuit is open (the database is known to be unreachable)."""
        return not self._open

    def retry_after_hint(self) -> int:
        """Seconds a refused client should wait: until the next probe while the circuit is open."""
        if self._open:
            return int(max(1, min(60, round(self._next_probe_mono - time.monotonic() + 1))))
        return 2

    def status(self) -> dict[str, Any]:
        with self._cond:
            pending = self._pending_rows
            oldest = self._queue[0].received_at if self._queue else None
        s = self.stats
        now = datetime.now(UTC)
        return {
            "pending_records": pending,
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
            "refused_total": s.refused,
            "failed_total": s.failed,
            "flushes_total": s.flushes,
            "flushes_by_method": dict(s.flushes_by_method),
            "last_flush_at": s.last_flush_at.isoformat().replace("+00:00", "Z") if s.last_flush_at else None,
            "last_flush_rows": s.last_flush_rows,
            "last_flush_ms": round(s.last_flush_ms, 2),
            "last_error": s.last_error,
            "last_error_at": s.last_error_at.isoformat().replace("+00:00", "Z") if s.last_error_at else None,
            "worker_pid": os.getpid(),
            "circuit": self.circuit_status(),
        }

    def circuit_status(self) -> dict[str, Any]:
        with self._cond:
            outages = [dict(o, probes=list(o["probes"])) for o in self._outages]
            state = {
                "state": "open" if self._open else "closed",
                "reason": self._open_reason or None,
                "open_since": self._opened_at.isoformat().replace("+00:00", "Z") if self._open and self._opened_at else None,
                "probe_attempt": self._probe_attempt if self._open else 0,
                "next_probe_in_s": round(max(0.0, self._next_probe_mono - time.monotonic()), 3)
                if self._open else None,
                "probe_base_s": self.retry_base_delay,
                "probe_cap_s": self.retry_max_delay,
                "write_timeout_s": self.write_timeout,
            }
        state["outages"] = outages
        return state

    @property
    def pending_rows(self) -> int:
        return self._pending_rows

    # ---- for the replayer -----------------------------------------------------------

    def report_sink_failure(self, message: str) -> None:
        """Another writer (the replayer) found the database unreachable: open the circuit."""
        self._record_error(message)
        self._open_circuit(message)

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
        if self._waiters or self._flush_requested or self._closing:
            return True
        if self._pending_rows >= self.batch_size:
            return True
        age = (datetime.now(UTC) - self._queue[0].received_at).total_seconds()
        return age >= self.flush_interval

    def _linger(self) -> None:
        # Group commit only pays when a commit carries many requests: with single-reading
        # requests a flush's fixed cost (round trip, transaction) dominated and only 1-2
        # requests shared it (docs/benchmarks.md). Waiting a few ms for the requests already
        # being parsed costs that much latency and saves most of the per-flush work.
        if self.flush_linger <= 0 or self._flush_requested or self._closing or self._open:
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
                    self._cond.wait_for(lambda: self._closing or not self._open, timeout=1.0)

    def _write_batch(self, batch: list[Submission]) -> bool:
        """Write, spool or hold the batch; True when it was held (nowhere durable to put it)."""
        rows = sum(len(s.readings) for s in batch)
        if self._open:
            return self._divert(batch, rows, self._open_reason)
        started = time.monotonic()
        try:
            result = self._write_with_retries(batch)
        except TransientSinkError as exc:
            self._record_error(str(exc))
            self._open_circuit(str(exc))
            return self._divert(batch, rows, str(exc))
        except Exception as exc:  # noqa: BLE001 - the data was refused; find which request
            log.warning("write refused (%s: %s); writing the batch's requests one by one",
                        type(exc).__name__, str(exc)[:200])
            return self._write_one_by_one(batch)
        self._committed(batch, result, rows, started)
        return False

    def _committed(self, batch: list[Submission], result: WriteResult, rows: int, started: float) -> None:
        self._probe_attempt = 0
        s = self.stats
        s.flushes += 1
        if result.method:
            s.flushes_by_method[result.method] = s.flushes_by_method.get(result.method, 0) + 1
        s.written += result.inserted
        s.duplicates += result.duplicates
        s.quarantined += result.quarantined
        s.last_flush_at = datetime.now(UTC)
        s.last_flush_rows = rows
        s.last_flush_ms = (time.monotonic() - started) * 1000
        faults.hit("after_live_commit")
        for sub in batch:
            ins, quar = result.per_request.get(sub.request_id, (None, 0))
            sub.inserted = ins
            sub.quarantined = quar
            sub.conflicts = result.conflicts.get(sub.request_id, [])
            sub.duplicates = None if ins is None else len(sub.readings) - ins - quar
            sub.finish("committed")
        if self.on_written is not None:
            try:
                self.on_written(batch, result)
            except Exception:  # noqa: BLE001 - observers must not undo a committed write
                log.exception("on_written observer failed")

    def _write_one_by_one(self, batch: list[Submission]) -> bool:
        for i, sub in enumerate(batch):
            rows = len(sub.readings)
            started = time.monotonic()
            try:
                result = self.runner.run(self.sink.write, [sub], timeout=self.write_timeout)
            except TransientSinkError as exc:
                self._open_circuit(str(exc))
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
                faults.hit("after_spool_append")
                self.stats.spooled += rows
                for sub in batch:
                    sub.finish("spooled")
                return False
        else:
            reason = f"database unavailable ({why[:160]}) and no spool is configured"
        # Durable nowhere: not acknowledged. The waiting requests get 503 + Retry-After at their
        # ACK_TIMEOUT (new ones at once, in submit()); the readings stay buffered, within
        # BUFFER_MAX_READINGS, and are written when the database or the spool can take them.
        self.stats.last_error = reason[:500]
        self.stats.last_error_at = datetime.now(UTC)
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

    def _write_with_retries(self, batch: list[Submission]) -> WriteResult:
        deadline = time.monotonic() + self.write_timeout

        def attempt() -> WriteResult:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WriteTimeout(f"no time left for another attempt within {self.write_timeout:g}s")
            return self.runner.run(self.sink.write, batch, timeout=remaining)

        retrying = Retrying(
            stop=stop_after_attempt(self.max_retries) | stop_after_delay(self.write_timeout),
            wait=wait_random_exponential(multiplier=self.retry_base_delay, max=self.retry_max_delay),
            retry=retry_if_exception(_retryable),
            reraise=True,
            before_sleep=self._before_retry,
        )
        return retrying(attempt)

    def _before_retry(self, state: Any) -> None:
        self.stats.retried += 1
        exc = state.outcome.exception() if state.outcome else None
        self._record_error(str(exc) if exc else "write failed")

    def _record_error(self, message: str) -> None:
        self.stats.failed_attempts += 1
        self.stats.last_error = message[:500]
        self.stats.last_error_at = datetime.now(UTC)
        log.warning("flush failed: %s", message[:200])

    # ---- circuit breaker -----------------------------------------------------------

    def _open_circuit(self, reason: str) -> None:
        with self._cond:
            self._open_reason = reason[:300]
            if self._open:
                return
            self._open = True
            self.sink_ok.clear()
            self._opened_at = datetime.now(UTC)
            self._opened_mono = time.monotonic()
            self._probe_attempt = 0
            self._next_probe_mono = self._opened_mono + self._probe_delay_cap(0)
            self._outages.append({"opened_at": self._opened_at.isoformat().replace("+00:00", "Z"), "closed_at": None,
                                  "reason": self._open_reason, "probes": deque(maxlen=200)})
            self._cond.notify_all()
            self._circuit.notify_all()
        log.warning("database unreachable (%s): circuit open, new batches go to the spool; probing in the"
                    " background", reason[:200])

    def _close_circuit(self) -> None:
        with self._cond:
            if not self._open:
                return
            self._open = False
            self._open_reason = ""
            if self._outages:
                self._outages[-1]["closed_at"] = datetime.now(UTC).isoformat().replace("+00:00", "Z")
            self.sink_ok.set()
            self._cond.notify_all()
            self._circuit.notify_all()
        log.warning("database reachable again after %.1fs: circuit closed",
                    time.monotonic() - self._opened_mono)

    def _probe_delay_cap(self, attempt: int) -> float:
        return min(self.retry_max_delay, self.retry_base_delay * (2 ** min(attempt, 40)))

    def probe_delay(self, attempt: int) -> float:
        """Exponential backoff with ("equal") jitter and a cap: uniform in [cap_n/2, cap_n]."""
        top = self._probe_delay_cap(attempt)
        return random.uniform(top / 2, top)

    def _probe_loop(self) -> None:
        # A worker that boots during an outage learns it at once, not from its first request.
        try:
            self.runner.run(self.sink.ping, timeout=self.probe_timeout)
        except Exception as exc:  # noqa: BLE001 - any failure means "down"
            self.report_sink_failure(f"start-up check: {exc}")
        last_probe_mono: float | None = None
        while True:
            with self._cond:
                self._circuit.wait_for(lambda: self._open or self._closing)
                if self._closing:
                    return
                attempt = self._probe_attempt
                if attempt == 0:
                    last_probe_mono = self._opened_mono
                delay = self.probe_delay(attempt)
                self._next_probe_mono = time.monotonic() + delay
                if self._circuit.wait_for(lambda: self._closing or not self._open, timeout=delay):
                    if self._closing:
                        return
                    continue  # closed by a successful write meanwhile
            started = time.monotonic()
            try:
                self.runner.run(self.sink.ping, timeout=self.probe_timeout)
                ok, error = True, None
            except Exception as exc:  # noqa: BLE001 - any failure means "still down"
                ok, error = False, str(exc)[:200]
            with self._cond:
                if self._outages:
                    self._outages[-1]["probes"].append({
                        "attempt": attempt,
                        "delay_s": round(delay, 4),
                        "delay_cap_s": round(self._probe_delay_cap(attempt), 4),
                        "gap_s": round(started - last_probe_mono, 4) if last_probe_mono is not None else None,
                        "ping_s": round(time.monotonic() - started, 4),
                        "ok": ok,
                        "error": error,
                    })
                last_probe_mono = started
                if not ok:
                    self._probe_attempt = attempt + 1
            if ok:
                self._close_circuit()
            else:
                log.info("probe %d failed (%s); next in <= %.2fs", attempt, error,
                         self._probe_delay_cap(attempt + 1))
