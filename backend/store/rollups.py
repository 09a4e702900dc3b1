"""Folding committed readings into the 1m/1h/1d rollups, after their commit (migrations/0052).

Every worker runs a RollupMerger; telemetry_rollup_merge() takes a try-lock, so one session
folds at a time across workers and instances and the others find nothing to do or skip.
Writers never wait for it: the readings it folds are already committed and already
answered from the tail (telemetry_unrolled) by every read. The interval bounds how much
one fold does, and how large that tail grows between folds.

The merger also deletes the log's rows that are folded and older than the stream's
retention (STREAM_RETENTION_S), as the stream process does: with STREAM_ENABLED=false nothing
else would, and the log would grow for ever.
"""

from __future__ import annotations

import logging
import threading
import time

import psycopg
from psycopg_pool import ConnectionPool

log = logging.getLogger(__name__)

EVENTS_PER_FOLD = 100  # stream_events rows (of up to 10,000 readings) per transaction
MERGE_LOCK = 2116419589  # the try-lock telemetry_rollup_merge() takes (migrations/0052)
PRUNE_EVERY_S = 30.0
PRUNE_BATCH = 5000
# One cleaner at a time across processes and instances (the stream's feed takes it too). A
# transaction-level lock: a transaction-mode pooler cannot leak it, unlike a session lock.
PRUNE_LOCK = 1936029293
# Expired and folded: a row past the cursor is the rollups' tail and stays (migrations/0052).
PRUNE_SQL = ("DELETE FROM stream_events WHERE id IN (SELECT id FROM stream_events"
             " WHERE created_at < now() - make_interval(secs => %s)"
             " AND id <= (SELECT last_id FROM telemetry_rollup_cursor) ORDER BY id LIMIT %s)")


def merge(conn: psycopg.Connection, events: int = EVENTS_PER_FOLD) -> int:
    """One fold of up to `events` rows past the cursor: readings folded, or -1 when another session is folding."""
    row = conn.execute("SELECT telemetry_rollup_merge(%s)", (events,)).fetchone()
    return int(row[0]) if row else 0


def merge_all(conn: psycopg.Connection) -> int:
    """Fold until nothing is left past the cursor (tests and the bench; workers use RollupMerger)."""
    total = 0
    while (n := merge(conn)) != 0:
        if n < 0:  # another session holds the lock: wait for its fold, then look again
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MERGE_LOCK,))
            continue
        total += n
    return total


def prune(conn: psycopg.Connection, keep_s: float) -> int:
    """Delete expired, folded rows of stream_events in bounded transactions; 0 when another session is at it."""
    deleted = 0
    while True:
        with conn.transaction():
            row = conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (PRUNE_LOCK,)).fetchone()
            if not row or not row[0]:
                return deleted
            n = conn.execute(PRUNE_SQL, (keep_s, PRUNE_BATCH)).rowcount
        deleted += n
        if n < PRUNE_BATCH:
            return deleted


class RollupMerger:
    def __init__(self, pool: ConnectionPool, every_s: float, keep_events_s: float) -> None:
        self.pool = pool
        self.every_s = every_s
        self.keep_events_s = keep_events_s
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
        pruned_at = time.monotonic()
        while not self._stop.wait(self.every_s):
            try:
                with self.pool.connection() as conn:
                    # A backlog (a spool replay, a bulk load) goes in bounded transactions.
                    while not self._stop.is_set() and merge(conn) > 0:
                        pass
                    if time.monotonic() - pruned_at >= PRUNE_EVERY_S:
                        pruned_at = time.monotonic()
                        prune(conn, self.keep_events_s)
            except psycopg.Error as exc:  # the database is away: the tail waits, reads stay exact
                log.warning("rollup merge: %s", exc)
