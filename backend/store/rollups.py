"""Folding committed readings into the 1m/1h/1d rollups, after their commit (migrations/0052).

Every worker runs a RollupMerger; telemetry_rollup_merge() takes a try-lock, so one session
folds at a time across workers and instances and the others find nothing to do or skip.
Writers never wait for it: the readings it folds are already committed and already
answered from the tail (telemetry_unrolled) by every read. The interval bounds how much
one fold does, and how large that tail grows between folds.
"""

from __future__ import annotations

import logging
import threading

import psycopg
from psycopg_pool import ConnectionPool

log = logging.getLogger(__name__)

EVENTS_PER_FOLD = 100  # stream_events rows (of up to 10,000 readings) per transaction


def merge(conn: psycopg.Connection, events: int = EVENTS_PER_FOLD) -> int:
    """One fold of up to `events` rows past the cursor: readings folded, or -1 when another session is folding."""
    row = conn.execute("SELECT telemetry_rollup_merge(%s)", (events,)).fetchone()
    return int(row[0]) if row else 0


def merge_all(conn: psycopg.Connection) -> int:
    """Fold until nothing is left past the cursor (tests, the bench, `python -m backend`)."""
    total = 0
    while (n := merge(conn)) != 0:
        if n < 0:  # another session holds the lock: wait for its fold, then look again
            conn.execute("SELECT pg_advisory_xact_lock(2116419589)")
            continue
        total += n
    return total


class RollupMerger:
    def __init__(self, pool: ConnectionPool, every_s: float) -> None:
        self.pool = pool
        self.every_s = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rollup-merge", daemon=True)

    def start(self) -> None:
        if self.every_s > 0:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                with self.pool.connection() as conn:
                    # A backlog (a spool replay, a bulk load) goes in bounded transactions.
                    while not self._stop.is_set() and merge(conn) > 0:
                        pass
            except psycopg.Error as exc:  # the database is away: the tail waits, reads stay exact
                log.warning("rollup merge: %s", exc)
