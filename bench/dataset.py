"""Data made inside PostgreSQL: the query data set (generate_series into the real table) and the COPY ceiling."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime

import psycopg
from psycopg import sql

METRICS = ("roll", "pitch", "alt", "bat_v")
QUERY_PREFIX = "q"

# The seed design's own table (bench/seed_app.py): one wide row per request.
SEED_SCHEMA = """
CREATE TABLE IF NOT EXISTS seed_telemetry (
    id             bigserial PRIMARY KEY,
    created_at     timestamptz NOT NULL DEFAULT now(),
    device_id      text,
    ts             timestamptz,
    roll           double precision,
    pitch          double precision,
    alt            double precision,
    bat_v          double precision,
    raw_data       text,
    parser_version text,
    data_source    text
);
CREATE INDEX IF NOT EXISTS seed_telemetry_created_at ON seed_telemetry (created_at);
"""

# Time-ordered like real traffic (every device reports every second), values vary per device and time.
_GENERATE = """
INSERT INTO telemetry_readings (device_id, metric, ts, value, received_at)
SELECT %(prefix)s || lpad(d::text, 3, '0'), m.name, t.ts,
       round(((d * 37 + g.i * m.k) %% 2000)::numeric / 10, 1)::double precision, t.ts
FROM generate_series(%(i0)s::int, %(i1)s::int) AS g(i)
CROSS JOIN LATERAL (SELECT %(end)s::timestamptz - (%(n)s - g.i) * interval '1 second' AS ts) AS t
CROSS JOIN generate_series(0, %(devices)s::int - 1) AS d
CROSS JOIN (VALUES ('roll', 3), ('pitch', 5), ('alt', 7), ('bat_v', 11)) AS m(name, k)
"""


def generate_readings(url: str, devices: int, timestamps: int, end: datetime, parallel: int = 2) -> float:
    """devices x 4 metrics x timestamps readings at 1 s spacing ending at `end`; returns seconds taken.

    The time range is split between `parallel` sessions (one per core) so both cores work.
    The sessions use synchronous_commit=off: only their own commit is asynchronous.
    """
    bounds = [(k * timestamps // parallel, (k + 1) * timestamps // parallel - 1) for k in range(parallel)]
    errors: list[BaseException] = []

    def work(i0: int, i1: int) -> None:
        try:
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("SET synchronous_commit = off")
                conn.execute(_GENERATE, {"prefix": QUERY_PREFIX, "i0": i0, "i1": i1, "end": end,
                                         "n": timestamps, "devices": devices})
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            errors.append(exc)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=work, args=b) for b in bounds if b[1] >= b[0]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - t0


def vacuum_analyze(url: str) -> float:
    """What autovacuum does to an insert-only table: statistics and the visibility map."""
    t0 = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE) telemetry_readings")
    return time.perf_counter() - t0


def checkpoint(url: str) -> float:
    """Write the load's dirty pages now rather than during the query measurements (needs superuser
    or pg_checkpoint; skipped, returning 0, when not allowed)."""
    t0 = time.perf_counter()
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CHECKPOINT")
    except psycopg.errors.InsufficientPrivilege:
        return 0.0
    return time.perf_counter() - t0


def create_copy_table(url: str, months: list[datetime]) -> str:
    """A scratch copy of telemetry_readings: same columns, constraints, indexes and monthly partitioning."""
    name = "bench_copy_readings"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {name}")
        conn.execute(f"CREATE TABLE {name} (LIKE telemetry_readings INCLUDING ALL) PARTITION BY RANGE (ts)")
        for m in sorted({datetime(d.year, d.month, 1, tzinfo=UTC) for d in months}):
            nxt = datetime(m.year + (m.month == 12), m.month % 12 + 1, 1, tzinfo=UTC)
            conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})").format(
                sql.Identifier(f"{name}_{m:%Y_%m}"), sql.Identifier(name), sql.Literal(m), sql.Literal(nxt)))
        conn.execute(f"CREATE TABLE {name}_default PARTITION OF {name} DEFAULT")
    return name


def copy_text(rows_by_request: list[tuple[str, list[tuple[float, float, float, float, float]]]],
              received: datetime) -> list[bytes]:
    """COPY text-format lines for the same readings the batched bodies carry (one chunk per request)."""
    recv = received.isoformat()
    chunks = []
    for device, messages in rows_by_request:
        rid = str(uuid.uuid4())
        lines = []
        for ts, roll, pitch, alt, bat in messages:
            t = datetime.fromtimestamp(ts, UTC).isoformat()
            for metric, value in (("roll", roll), ("pitch", pitch), ("alt", alt), ("bat_v", bat)):
                lines.append(f"{device}\t{metric}\t{t}\t{value!r}\t\\N\t{recv}\t{rid}\n")
        chunks.append("".join(lines).encode())
    return chunks


def copy_rows(url: str, table: str, chunks: list[bytes]) -> float:
    """One client, one COPY, one transaction; returns seconds until committed."""
    with psycopg.connect(url) as conn:
        t0 = time.perf_counter()
        with conn.cursor() as cur, cur.copy(
            f"COPY {table} (device_id, metric, ts, value, value_text, received_at, request_id) FROM STDIN"
        ) as copy:
            for chunk in chunks:
                copy.write(chunk)
        conn.commit()
        return time.perf_counter() - t0
