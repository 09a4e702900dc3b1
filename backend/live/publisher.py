"""The writer's half of the stream with REDIS_URL: after a commit, wake every stream process.

(Without Redis the wake-up is PostgreSQL's NOTIFY from inside the commit, migrations/0041;
this publisher can send NOTIFY too, for a database where that trigger is not installed.)

Registered with WriteObservers (backend/ingest/observers.py), so it runs after the buffer's
and the replayer's commits. The committed readings are already in `stream_events` (written
inside the same transaction by the trigger of migrations/0040); what crosses processes is
only a wake-up with no payload (NOTIFY's 8,000-byte limit never matters): each stream
process then reads the rows after its cursor. The flusher only sets an Event; one thread
per worker sends the wake-ups, coalescing bursts, so a slow Redis or a busy database
connection never delays the next flush. A lost wake-up costs latency only: stream processes
also poll every STREAM_POLL_S.
"""

from __future__ import annotations

import logging
import threading
import time

import psycopg

from backend.ingest.sinks import Submission, WriteResult

log = logging.getLogger(__name__)

CHANNEL = "telemetry_stream"  # the NOTIFY channel and the Redis pub/sub channel


class CommitPublisher:
    def __init__(self, database_url: str, redis_url: str = "") -> None:
        self._database_url = database_url
        self._redis_url = redis_url
        self._pending = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: psycopg.Connection | None = None
        self._redis: object | None = None
        self._last_error_log = 0.0
        self.published = 0

    # The WriteObserver: called on the flusher thread right after a commit.
    def __call__(self, batch: list[Submission], result: WriteResult) -> None:
        if result.inserted > 0:  # duplicates only: the trigger wrote no stream row
            self._pending.set()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="stream-publisher", daemon=True)
            self._thread.start()

    def close(self, timeout: float = 2.0) -> None:
        self._stop.set()
        self._pending.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._conn is not None:
            self._conn.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._pending.wait()
            if self._stop.is_set():
                return
            self._pending.clear()
            try:
                self._publish()
                self.published += 1
            except Exception as exc:  # noqa: BLE001 - the readings are committed; subscribers poll
                self._drop_connections()
                now = time.monotonic()
                if now - self._last_error_log > 30:
                    self._last_error_log = now
                    log.warning("stream wake-up not sent (%s); stream processes will poll", exc)
                self._stop.wait(0.5)

    def _publish(self) -> None:
        if self._redis_url:
            import redis

            if self._redis is None:
                self._redis = redis.Redis.from_url(self._redis_url, socket_timeout=2, socket_connect_timeout=2)
            self._redis.publish(CHANNEL, b"")  # type: ignore[attr-defined]
            return
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self._database_url, autocommit=True, connect_timeout=5)
        self._conn.execute(f"NOTIFY {CHANNEL}")

    def _drop_connections(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # noqa: BLE001
                pass
            self._conn = None
        self._redis = None
