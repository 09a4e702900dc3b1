"""Periodic housekeeping in each worker: partitions ahead of time, then retention.

Runs in every worker but the SQL function takes an advisory lock and creates only what
is missing, so N workers doing it costs N cheap no-ops. Retention (when a RETENTION_*_DAYS
is set) takes a try-lock: one worker drops, the others skip (backend/store/retention.py).
"""

from __future__ import annotations

import logging
import threading

import psycopg
from psycopg_pool import ConnectionPool

from backend.store import retention
from backend.store.partitions import ensure_partitions

log = logging.getLogger(__name__)


class Maintenance:
    def __init__(self, pool: ConnectionPool, months_ahead: int, every_s: float = 3600.0,
                 policy: retention.RetentionPolicy | None = None) -> None:
        self.pool = pool
        self.months_ahead = months_ahead
        self.every_s = every_s
        self.policy = policy
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="maintenance", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def run_once(self) -> int:
        with self.pool.connection() as conn:
            return ensure_partitions(conn, self.months_ahead)

    def apply_retention(self) -> list[retention.TierPlan] | None:
        """Drop what the policy says is past; None when off or another worker is doing it."""
        if self.policy is None or not self.policy.enabled:
            return None
        with self.pool.connection() as conn:
            return retention.apply(conn, self.policy)

    def _run(self) -> None:
        # First pass soon after start (a worker recycled every few minutes still does it).
        wait = min(60.0, self.every_s)
        while not self._stop.wait(wait):
            wait = self.every_s
            try:
                created = self.run_once()
                if created:
                    log.info("maintenance: created %d partitions", created)
                plans = self.apply_retention()
                if plans and any(tp.drop for tp in plans):
                    log.info("maintenance: %s", retention.describe(plans, dry_run=False))
            except (psycopg.Error, retention.RetentionError) as exc:
                log.warning("maintenance: %s", exc)
