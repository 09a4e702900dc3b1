"""PostgreSQL sink: COPY into a session's staging table, then idempotent inserts.

Works through Supabase's transaction-mode pooler: the staging table is emptied at every
commit (ON COMMIT DELETE ROWS) and created if missing in every transaction (so a transaction
that lands on another server session finds one), and no prepared statement outlives it
(prepare_threshold=None on the pool's connections).
"""

from __future__ import annotations

import logging

import psycopg
from psycopg_pool import ConnectionPool

from .base import Submission, TransientSinkError, WriteResult

log = logging.getLogger(__name__)

# Created once per session, not per flush: CREATE + DROP of a temp table cost more
# PostgreSQL CPU than the rest of a small flush (docs/benchmarks.md). Change its shape only
# together with its name (sessions keep the old table).
_STAGE = """
CREATE TEMP TABLE IF NOT EXISTS telemetry_stage (
    device_id text, metric text, ts timestamptz, value double precision,
    value_text text, received_at timestamptz, request_id uuid
) ON COMMIT DELETE ROWS
"""
# Binary COPY: about 4x less client CPU per row than text, and no timestamp parsing on the server.
_COPY = (
    "COPY telemetry_stage (device_id, metric, ts, value, value_text, received_at, request_id)"
    " FROM STDIN (FORMAT BINARY)"
)
_STAGE_TYPES = ["text", "text", "timestamptz", "float8", "text", "timestamptz", "uuid"]
# First sight of a metric fixes its type; ordered so concurrent writers lock in one order.
_CATALOGUE = """
INSERT INTO telemetry_fields (name, value_type)
SELECT metric, min(CASE WHEN value_text IS NULL THEN 'number' ELSE 'text' END)
FROM telemetry_stage GROUP BY metric ORDER BY metric
ON CONFLICT (name) DO NOTHING
"""
# A reading whose type contradicts the catalogue is kept in quarantine, not dropped.
_QUARANTINE_MISTYPED = """
WITH bad AS (
    DELETE FROM telemetry_stage s USING telemetry_fields f
    WHERE f.name = s.metric
      AND f.value_type <> CASE WHEN s.value_text IS NULL THEN 'number' ELSE 'text' END
    RETURNING s.*, f.value_type AS want
)
INSERT INTO telemetry_quarantine (received_at, request_id, device_id, reason, raw)
SELECT received_at, request_id, device_id,
       format('metric %s is %s; got %s', metric, want, coalesce(value_text, value::text)),
       format('%s:%s', metric, coalesce(value_text, value::text))
FROM bad
RETURNING request_id
"""
# Counted per request in SQL: one row per request comes back, not one per reading.
_INSERT = """
WITH ins AS (
    INSERT INTO telemetry_readings (device_id, metric, ts, value, value_text, received_at, request_id)
    SELECT device_id, metric, ts, value, value_text, received_at, request_id FROM telemetry_stage
    ON CONFLICT (device_id, metric, ts) DO NOTHING
    RETURNING request_id
)
SELECT request_id, count(*) FROM ins GROUP BY request_id
"""
_DEVICES = """
INSERT INTO devices (device_id, first_seen, last_seen)
SELECT device_id, min(received_at), max(received_at) FROM telemetry_stage
GROUP BY device_id ORDER BY device_id
ON CONFLICT (device_id) DO UPDATE SET last_seen = greatest(devices.last_seen, excluded.last_seen)
"""
_RAW = (
    "COPY telemetry_raw (request_id, received_at, device_id, parser_version, data_source,"
    " content_type, payload) FROM STDIN (FORMAT BINARY)"
)
_RAW_TYPES = ["uuid", "timestamptz", "text", "text", "text", "text", "text"]
_REJECTED = (
    "COPY telemetry_quarantine (received_at, request_id, device_id, position, reason, raw)"
    " FROM STDIN"
)


class PostgresSink:
    name = "postgres"

    def __init__(self, pool: ConnectionPool, store_raw: bool = True, replay: bool = False) -> None:
        self.pool = pool
        self.store_raw = store_raw
        # Replay mode (spool replayer): skip requests a committed write already stored, so
        # raw payloads and quarantine rows are not written twice (readings never are).
        self.replay = replay
        # Tests set this to crash between COMMIT and the caller's bookkeeping.
        self.after_commit_hook = None

    def write(self, batch: list[Submission]) -> WriteResult:
        result = WriteResult()
        try:
            with self.pool.connection() as conn:
                with conn.transaction():
                    if any(s.done.is_set() for s in batch):  # the buffer gave up (deadline) and spooled it
                        raise TransientSinkError("write abandoned: the batch was handled after its deadline")
                    todo = self._not_yet_written(conn, batch) if self.replay else batch
                    self._write(conn, todo, result)
                    if len(todo) != len(batch):  # already stored: counted as duplicates
                        result.staged += sum(len(s.readings) for s in batch) - sum(len(s.readings) for s in todo)
        except psycopg.OperationalError as exc:
            raise TransientSinkError(str(exc).strip() or type(exc).__name__) from exc
        except psycopg.errors.SerializationFailure as exc:
            raise TransientSinkError(str(exc)) from exc
        except psycopg.errors.DeadlockDetected as exc:
            raise TransientSinkError(str(exc)) from exc
        if self.after_commit_hook is not None:
            self.after_commit_hook(batch)
        return result

    def _write(self, conn: psycopg.Connection, batch: list[Submission], result: WriteResult) -> None:
        cur = conn.cursor()
        staged = 0
        if any(s.readings for s in batch):
            cur.execute(_STAGE)
            with cur.copy(_COPY) as copy:
                copy.set_types(_STAGE_TYPES)
                for sub in batch:
                    rid = sub.request_id
                    for r in sub.readings:
                        copy.write_row((r.device_id, r.metric, r.ts, r.value, r.value_text, sub.received_at, rid))
                    staged += len(sub.readings)
            # One round trip for the four statements (simple query protocol, no parameters).
            cur.execute(";".join((_CATALOGUE, _QUARANTINE_MISTYPED, _INSERT, _DEVICES)))
            cur.nextset()
            quarantined: dict = {}
            for (rid,) in cur.fetchall():
                quarantined[rid] = quarantined.get(rid, 0) + 1
            cur.nextset()
            inserted: dict = dict(cur.fetchall())
            result.staged = staged
            result.inserted = sum(inserted.values())
            result.quarantined = sum(quarantined.values())
            result.per_request = {
                s.request_id: (inserted.get(s.request_id, 0), quarantined.get(s.request_id, 0)) for s in batch
            }
        if self.store_raw and any(s.raw_payload is not None for s in batch):
            with cur.copy(_RAW) as copy:
                copy.set_types(_RAW_TYPES)
                for sub in batch:
                    if sub.raw_payload is not None:
                        copy.write_row((sub.request_id, sub.received_at, sub.device_id, sub.parser_version,
                                        sub.data_source, sub.content_type, sub.raw_payload))
        if any(s.rejected for s in batch):
            with cur.copy(_REJECTED) as copy:
                for sub in batch:
                    for err in sub.rejected:
                        copy.write_row((sub.received_at, sub.request_id, sub.device_id, err.position,
                                        err.reason, err.raw))

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
        except (psycopg.OperationalError, Exception) as exc:
            raise TransientSinkError(str(exc).strip() or type(exc).__name__) from exc

    def close(self) -> None:
        self.pool.close()
