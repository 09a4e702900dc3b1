"""PostgreSQL sink: one idempotent telemetry_write() call per flush.

Readings go in with ON CONFLICT (device_id, metric, ts) DO NOTHING, so a batch written twice
(a retry after a lost connection, a spool replay) stores each reading once. A reading that
meets a stored one with another value is a conflict (quarantined, reported), and one whose
time the server assigned moves to the next free microsecond (migrations/0013). Works through
Supabase's transaction-mode pooler: a flush is a single statement in autocommit and no
prepared statement outlives it (prepare_threshold=None on the pool's connections).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import orjson
import psycopg
from psycopg_pool import ConnectionPool

from backend.ingest.sinks.base import Submission, TransientSinkError, WriteResult

log = logging.getLogger(__name__)

# The whole flush is one call of telemetry_write() (migrations/0011_write_function.sql): one
# statement in autocommit, so one round trip and one transaction, with plans PL/pgSQL keeps
# for the session. The batch travels as one JSON document that orjson writes in C.
_WRITE = "SELECT req, n_inserted, n_quarantined, conflicts FROM telemetry_write(%s::jsonb, %s)"
# Big batches whose metric types the worker confirmed: COPY straight into the table. COPY
# inserts rows in bulk; INSERT ... ON CONFLICT inserts them one at a time with a
# speculative insertion each. Measured per reading: 10.4 vs 16-17 us of PostgreSQL CPU, and
# less client CPU (docs/benchmarks.md). A duplicate reading (a gateway re-sending a batch)
# aborts the COPY's transaction; the batch then goes through telemetry_write(), which
# skips what is already stored. Below this size the extra round trips cost more than COPY saves.
COPY_MIN_READINGS = 256
_COPY = (
    "COPY telemetry_readings (device_id, metric, ts, value, value_text, received_at, request_id)"
    " FROM STDIN (FORMAT BINARY)"
)
_COPY_TYPES = ["text", "text", "timestamptz", "float8", "text", "timestamptz", "uuid"]


class PostgresSink:
    name = "postgres"

    def __init__(self, pool: ConnectionPool, store_raw: bool = True, replay: bool = False,
                 after_commit: Callable[[list[Submission]], None] | None = None) -> None:
        self.pool = pool
        self.store_raw = store_raw
        # Replay mode (spool replayer): skip requests a committed write already stored, so
        # raw payloads and quarantine rows are not written twice (readings never are).
        self.replay = replay
        # Crash tests (FAULT_POINT=after_commit) exit between COMMIT and the caller's bookkeeping.
        self.after_commit = after_commit

    def write(self, batch: list[Submission]) -> WriteResult:
        try:
            with self.pool.connection() as conn:
                if any(s.done.is_set() for s in batch):  # the buffer gave up (deadline) and spooled it
                    raise TransientSinkError("write abandoned: the batch was handled after its deadline")
                todo = self._not_yet_written(conn, batch) if self.replay else batch
                result = self._write(conn, todo)
                if len(todo) != len(batch):  # already stored: counted as duplicates
                    result.staged += sum(len(s.readings) for s in batch) - sum(len(s.readings) for s in todo)
        except psycopg.OperationalError as exc:
            raise TransientSinkError(str(exc).strip() or type(exc).__name__) from exc
        except psycopg.errors.SerializationFailure as exc:
            raise TransientSinkError(str(exc)) from exc
        except psycopg.errors.DeadlockDetected as exc:
            raise TransientSinkError(str(exc)) from exc
        if self.after_commit is not None:
            self.after_commit(batch)
        return result

    def _write(self, conn: psycopg.Connection, batch: list[Submission]) -> WriteResult:
        staged = sum(len(s.readings) for s in batch)
        if staged >= COPY_MIN_READINGS and all(s.typed for s in batch if s.readings):
            try:
                with conn.transaction():
                    with conn.cursor().copy(_COPY) as copy:
                        copy.set_types(_COPY_TYPES)
                        write_row = copy.write_row
                        for sub in batch:
                            received, rid = sub.received_at, sub.request_id
                            for r in sub.readings:
                                write_row((r.device_id, r.metric, r.ts, r.value, r.value_text, received, rid))
                    conn.execute(_WRITE, (self._document(batch, readings=False, latest=True), False)).fetchall()
            except psycopg.errors.UniqueViolation:
                pass  # some readings are stored already: the idempotent path below
            else:
                return WriteResult(staged=staged, inserted=staged, method="copy",
                                   per_request={s.request_id: (len(s.readings), 0) for s in batch})
        check_types = any(not s.typed for s in batch if s.readings)
        rows = conn.execute(_WRITE, (self._document(batch, readings=True, latest=not check_types),
                                     check_types)).fetchall()
        # Several rows per request may come back (inserted, moved, conflicts): summed here.
        per: dict = {}
        ordinals: list[tuple[object, int, str]] = []
        for rid, i, q, conflicts in rows:
            ins, quar = per.get(rid, (0, 0))
            per[rid] = (ins + int(i), quar + int(q))
            ordinals += [(rid, int(n), reason) for n, reason in conflicts or ()]
        return WriteResult(
            staged=staged,
            inserted=sum(i for i, _ in per.values()),
            quarantined=sum(q for _, q in per.values()),
            per_request={s.request_id: per.get(s.request_id, (0, 0)) for s in batch},
            conflicts=_conflicts_by_request(batch, ordinals) if ordinals else {},
            method="insert",
        )

    def _document(self, batch: list[Submission], readings: bool, latest: bool) -> str:
        """telemetry_write()'s batch document (its layout is described in the migrations)."""
        r: list[tuple] = []
        late: list[tuple] = []  # server-timed readings, after all others (see _document_order)
        w: list[tuple] = []
        q: list[tuple] = []
        d: list[tuple] = []
        for sub in batch:
            received, rid = sub.received_at, sub.request_id
            if readings:
                pos = sub.positions if len(sub.positions) == len(sub.readings) else [None] * len(sub.readings)
                if not any(sub.server_timed):
                    r += [(x.device_id, x.metric, x.ts, x.value, x.value_text, received, rid, p, False)
                          for x, p in zip(sub.readings, pos, strict=True)]
                else:
                    for x, p, st in zip(sub.readings, pos, sub.server_timed, strict=True):
                        (late if st else r).append((x.device_id, x.metric, x.ts, x.value, x.value_text,
                                                    received, rid, p, st))
            if self.store_raw and sub.raw_payload is not None:
                w.append((rid, received, sub.device_id, sub.parser_version, sub.data_source, sub.content_type,
                          sub.raw_payload))
            q += [(received, rid, sub.device_id, e.position, e.reason, e.raw) for e in sub.rejected]
            d += [(device_id, received) for device_id in {x.device_id for x in sub.readings}]
        if late:
            r += late
        doc = {"r": r, "w": w, "q": q, "d": d}
        if latest:
            doc["l"] = _latest_of_rows(r) if readings else _latest(batch)
        return orjson.dumps(doc).decode()

    @staticmethod
    def _not_yet_written(conn: psycopg.Connection, batch: list[Submission]) -> list[Submission]:
        ids = [s.request_id for s in batch]
        done = {r[0] for r in conn.execute(
            "SELECT request_id FROM telemetry_raw WHERE request_id = ANY(%(ids)s)"
            " UNION SELECT request_id FROM telemetry_quarantine WHERE request_id = ANY(%(ids)s)", {"ids": ids})}
        return [s for s in batch if s.request_id not in done] if done else batch

    def ping(self) -> None:
        try:
            with self.pool.connection(timeout=2.0) as conn:
                conn.execute("SELECT 1")
        except Exception as exc:  # noqa: BLE001 - whatever keeps SELECT 1 from answering means "down"
            raise TransientSinkError(str(exc).strip() or type(exc).__name__) from exc

    def close(self) -> None:
        self.pool.close()


def _document_order(batch: list[Submission]) -> list[tuple[Submission, int]]:
    """(submission, reading index) for each reading, in the order _document() lists them.

    Readings with a device time first, server-timed ones after: the first reading of a key
    in the document wins it, and a device's own time must win over one the server made up.
    """
    first: list[tuple[Submission, int]] = []
    late: list[tuple[Submission, int]] = []
    for sub in batch:
        flags = sub.server_timed if any(sub.server_timed) else None
        for i in range(len(sub.readings)):
            (late if flags and flags[i] else first).append((sub, i))
    return first + late


def _conflicts_by_request(batch: list[Submission], ordinals: list[tuple[object, int, str]]
                          ) -> dict[object, list[tuple[int, str]]]:
    order = _document_order(batch)
    out: dict[object, list[tuple[int, str]]] = {}
    for rid, n, reason in ordinals:
        sub, index = order[n - 1]
        out.setdefault(rid, []).append((index, reason))
    return out


def _latest_of_rows(rows: list[tuple]) -> list[tuple]:
    """device_latest rows from document rows; on a tie the row that won the key (first) wins."""
    best: dict[tuple[str, str], tuple] = {}
    # Newest first: readings mostly arrive in time order, so each key is set once; ">="
    # while walking backwards leaves the earliest of equal times, the one that was stored.
    for row in reversed(rows):
        key = (row[0], row[1])
        cur = best.get(key)
        if cur is None or row[2] >= cur[2]:
            best[key] = row
    return [row[:6] for row in best.values()]


def _latest(batch: list[Submission]) -> list[tuple]:
    """The newest reading of each (device, metric) in the batch, for device_latest."""
    best: dict[tuple[str, str], tuple] = {}
    for sub in batch:
        received = sub.received_at
        # Newest first: readings mostly arrive in time order, so each key is set once.
        for r in reversed(sub.readings):
            key = (r.device_id, r.metric)
            cur = best.get(key)
            if cur is None or r.ts > cur[2]:
                best[key] = (r.device_id, r.metric, r.ts, r.value, r.value_text, received)
    return list(best.values())
