"""The edge program's store-and-forward queue: a SQLite file on the gateway's disk.

Readings wait here until the ingest API acknowledged them, so an outage of the network or
of the service loses nothing the poller read (docs/modbus.md).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MAX_STORED_RESPONSE = 2000  # characters of an answer kept with a dead letter


@dataclass(frozen=True)
class QueuedRecord:
    id: int
    payload: str  # the record as JSON text, exactly as it will be sent


class DiskQueue:
    """A bounded FIFO of JSON records in SQLite (WAL, synchronous=FULL).

    AUTOINCREMENT ids never reuse a deleted id, so id order is arrival order even
    across restarts. Thread-safe through one lock; the writers are a few poll threads
    and one sender, far below what SQLite handles.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_records: int = 100_000,
        overflow: str = "drop_oldest",
        max_dead_letters: int = 10_000,
    ) -> None:
        if overflow not in ("drop_oldest", "drop_newest"):
            raise ValueError("overflow must be drop_oldest or drop_newest")
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = str(path)
        self.max_records = max_records
        self.overflow = overflow
        self.max_dead_letters = max_dead_letters
        self.dropped = 0
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: the WAL is fsync'd at every commit, so a power cut after put() returns
        # cannot lose the record.
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS outbox ("
            " id INTEGER PRIMARY KEY AUTOINCREMENT,"
            " payload TEXT NOT NULL,"
            " enqueued_at REAL NOT NULL)"
        )
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS dead_letter ("
            " id INTEGER PRIMARY KEY AUTOINCREMENT,"
            " outbox_id INTEGER,"
            " payload TEXT NOT NULL,"
            " status INTEGER,"
            " reason TEXT,"
            " moved_at REAL NOT NULL)"
        )
        self._count = self._db.execute("SELECT count(*) FROM outbox").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __len__(self) -> int:
        with self._lock:
            return self._count

    def put(self, records: list[dict[str, Any]]) -> int:
        """Append records; returns how many records the bound made us drop."""
        if not records:
            return 0
        # allow_nan=False: a NaN reaching this point is a bug upstream, and the API
        # would reject the whole message anyway.
        payloads = [json.dumps(r, separators=(",", ":"), allow_nan=False) for r in records]
        now = time.time()
        dropped = 0
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                room = self.max_records - self._count
                if self.overflow == "drop_newest" and len(payloads) > room:
                    dropped = len(payloads) - max(room, 0)
                    payloads = payloads[: max(room, 0)]
                self._db.executemany(
                    "INSERT INTO outbox (payload, enqueued_at) VALUES (?, ?)", [(p, now) for p in payloads]
                )
                count = self._count + len(payloads)
                if self.overflow == "drop_oldest" and count > self.max_records:
                    excess = count - self.max_records
                    self._db.execute(
                        "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox ORDER BY id LIMIT ?)", (excess,)
                    )
                    dropped = excess
                    count -= excess
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._count = count
            self.dropped += dropped
        if dropped:
            log.warning(
                "queue full (%d records): dropped %d %s record(s); %d dropped since start",
                self.max_records,
                dropped,
                "oldest" if self.overflow == "drop_oldest" else "newest",
                self.dropped,
            )
        return dropped

    def peek(self, limit: int) -> list[QueuedRecord]:
        with self._lock:
            rows = self._db.execute("SELECT id, payload FROM outbox ORDER BY id LIMIT ?", (limit,)).fetchall()
        return [QueuedRecord(i, p) for i, p in rows]

    def ack(self, ids: list[int]) -> None:
        """Remove delivered records (ids that the bound already dropped are ignored)."""
        if not ids:
            return
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                cur = self._db.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in ids])
                removed = cur.rowcount
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._count -= removed

    def dead_letter(self, records: list[QueuedRecord], status: int | None, reason: str, *, remove: bool = True) -> None:
        """Move records aside (or, with remove=False, keep a copy next to a delivered one)."""
        if not records:
            return
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "INSERT INTO dead_letter (outbox_id, payload, status, reason, moved_at) VALUES (?, ?, ?, ?, ?)",
                    [(r.id, r.payload, status, reason[:MAX_STORED_RESPONSE], now) for r in records],
                )
                removed = 0
                if remove:
                    cur = self._db.executemany("DELETE FROM outbox WHERE id = ?", [(r.id,) for r in records])
                    removed = cur.rowcount
                self._db.execute(
                    "DELETE FROM dead_letter WHERE id IN (SELECT id FROM dead_letter ORDER BY id DESC LIMIT -1 OFFSET ?)",
                    (self.max_dead_letters,),
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._count -= removed

    def dead_letters(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, outbox_id, payload, status, reason, moved_at FROM dead_letter ORDER BY id"
            ).fetchall()
        keys = ("id", "outbox_id", "payload", "status", "reason", "moved_at")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def requeue_dead_letters(self) -> int:
        """Put dead letters back at the end of the queue (after fixing the server side)."""
        with self._lock:
            rows = self._db.execute("SELECT id, payload FROM dead_letter ORDER BY id").fetchall()
        if not rows:
            return 0
        self.put([json.loads(p) for _i, p in rows])
        with self._lock:
            self._db.executemany("DELETE FROM dead_letter WHERE id = ?", [(i,) for i, _p in rows])
        return len(rows)
