"""The service's health as one worker sees it: what `/health` answers (backend/api/health.py).

The public answer is the seed's shape (status, timestamp, supabase_connected, batch_status)
plus the database's kind and the spool's state: nothing that helps an attacker (no error
text, which carries the database's host, port and user; no path; no pid). The details add
everything an operator needs (circuit, spool counters, errors).

The database ping is cached per worker for about a second, and it never touches the
circuit: a flood of anonymous probes must not push a busy worker onto the spool.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from datetime import UTC, datetime
from typing import Any

from psycopg_pool import ConnectionPool

from backend.config import Config
from backend.ingest.buffer import BatchBuffer
from backend.ingest.spool import Spool
from backend.store.database import Database

CACHE_S = 1.0
INFLUX_COMPAT_VERSION = "2.7.0-telemetry"  # the InfluxDB API version /ping reports (api/line_protocol.py)
PING_TIMEOUT_S = 2.0
# Public spool fields: how much is waiting and whether more can be taken.
SPOOL_PUBLIC = ("enabled", "accepting", "depth_bytes", "own_pending_readings", "oldest_unflushed_age_s")


class HealthCheck:
    """One worker's view of its own health; `answer()` is what /health returns."""

    def __init__(self, cfg: Config, database: Database, pool: ConnectionPool, buffer: BatchBuffer,
                 spool: Spool | None, cache_s: float = CACHE_S, ping_timeout: float = PING_TIMEOUT_S) -> None:
        self._cfg = cfg
        self._database = database
        self._pool = pool
        self._buffer = buffer
        self._spool = spool
        self._cache_s = cache_s
        self._ping_timeout = ping_timeout
        self._lock = threading.Lock()
        self._pinged_at = -1e9
        self._ping_result: tuple[bool, str | None] = (False, None)
        self._ping_future: Future[tuple[bool, str | None]] | None = None
        # One thread: a ping stuck on a black-holed connection holds it, not a request thread.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="health-ping")

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _ping(self) -> tuple[bool, str | None]:
        try:
            with self._pool.connection(timeout=self._ping_timeout) as conn:
                conn.execute("SELECT 1")
            return True, None
        except Exception as exc:  # noqa: BLE001 - any failure means "not connected"; the text is for details
            return False, (str(exc).strip() or type(exc).__name__)[:300]

    def connected(self) -> tuple[bool, str | None]:
        """(reachable, error text); the circuit's view when it is open, else a cached ping."""
        if not self._buffer.sink_available():
            return False, f"circuit open: {self._buffer.circuit_status()['reason']}"[:300]
        with self._lock:
            if time.monotonic() - self._pinged_at < self._cache_s:
                return self._ping_result
            if self._ping_future is None or self._ping_future.done():
                self._ping_future = self._executor.submit(self._ping)
            future = self._ping_future
        try:
            result = future.result(timeout=self._ping_timeout + 0.5)
        except FutureTimeout:
            result = (False, f"no answer to a ping within {self._ping_timeout:g}s")
        with self._lock:
            self._ping_result, self._pinged_at = result, time.monotonic()
        return result

    def answer(self, details: bool) -> tuple[dict[str, Any], int]:
        connected, error = self.connected()
        batch = self._buffer.status()
        spool = self._spool.status() if self._spool is not None else None
        age = max(batch["oldest_pending_age_s"], spool["oldest_unflushed_age_s"] if spool else 0.0)
        limit = self._cfg.health_max_unflushed_age
        status, reason = ("healthy", None) if connected else ("unhealthy", "database unreachable")
        if connected and 0 < limit < age:
            # The database answers, yet acknowledged readings are not reaching it (a stuck or
            # slow replay, a full disk): an operator must hear of it. Still 200: this instance
            # takes and keeps data, and a balancer that dropped it would not drain the backlog.
            status = "degraded"
            reason = (f"acknowledged readings are not reaching the database: the oldest unflushed one is"
                      f" {age:.0f}s old (HEALTH_MAX_UNFLUSHED_AGE={limit:g})")
        # Truthful: the seed's name says Supabase, so it is true only for a Supabase database.
        supabase = connected and self._database.kind == "supabase"
        body: dict[str, Any] = {
            # name/message/version: what influxdb-client's health() needs to read this answer
            # (docs/doors.md); `status` stays ours (healthy | degraded | unhealthy).
            "name": "telemetry-ingest",
            "message": reason or "ready for queries and writes",
            "version": INFLUX_COMPAT_VERSION,
            "status": status,
            "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            "database_connected": connected,
            "supabase_connected": supabase,
            # Which database this writes to: embedded | postgresql | supabase, and how it is reached.
            "database": {"kind": self._database.kind, "via": self._database.via, "connected": connected},
            "oldest_unflushed_age_s": age,
            "max_unflushed_age_s": limit,
        }
        if details:
            batch["supabase_healthy"] = supabase
            body["batch_status"] = batch
            body["database"]["name"] = self._database.display
            body["worker_pid"] = os.getpid()
            if spool is not None:
                body["spool"] = spool
            if error and not connected:
                reason = f"database unreachable: {error}"[:300]
        else:
            body["batch_status"] = {"pending_records": batch["pending_records"], "batch_size": batch["batch_size"],
                                    "batch_full": batch["batch_full"], "supabase_healthy": supabase}
            body["spool"] = ({k: spool[k] for k in SPOOL_PUBLIC} if spool is not None
                             else {"enabled": False, "accepting": False})
        if reason:
            body["reason"] = reason
            body["message"] = reason
        return body, 200 if connected else 503
