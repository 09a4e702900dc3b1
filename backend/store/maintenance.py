"""Periodic housekeeping in each worker: partitions ahead of time.

Runs in every worker but the SQL function takes an advisory lock and creates only what
is missing, so N workers doing it costs N cheap no-ops.
"""

from __future__ import annotations

import logging
import threading

import psycopg
from psycopg_pool import ConnectionPool

from backend.store.partitions import ensure_partitions

log = logging.getLogger(__name__)


class Maintenance:
    def __init__(self, pool: ConnectionPool, months_ahead: int, every_s: float = 3600.0) -> None:
        self.pool = pool
        self.months_ahead = months_ahead
        self.every_s = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="maintenance", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def run_once(self) -> int:
        with self.pool.connection() as conn:
            return ensure_partitions(conn, self.months_ahead)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                created = self.run_once()
                if created:
                    log.info("maintenance: created %d partitions", created)
            except psycopg.Error as exc:
                log.warning("maintenance: %s", exc)
