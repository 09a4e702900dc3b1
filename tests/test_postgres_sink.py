"""The PostgreSQL sink and buffer against a server that goes away and comes back."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import psycopg

from backend.buffer import BatchBuffer
from backend.db import make_pool
from backend.parsing import Reading
from backend.sinks import Submission
from backend.sinks.postgres import PostgresSink


def submission(device: str, n: int, start: datetime) -> Submission:
    readings = [Reading(device, "alt", start + timedelta(seconds=i), float(i)) for i in range(n)]
    return Submission(request_id=uuid.uuid4(), readings=readings, received_at=datetime.now(UTC))


def count(url: str) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT count(*) FROM telemetry_readings").fetchone()[0]


def test_flush_while_postgres_is_stopped_then_restarted_loses_nothing(stoppable_pg):
    pool = make_pool(stoppable_pg.url, 1, 2)
    buffer = BatchBuffer(PostgresSink(pool), batch_size=100, flush_interval=0.05, max_retries=2,
                         retry_base_delay=0.05, retry_max_delay=0.5)
    buffer.start()
    try:
        t0 = datetime(2026, 11, 23, 8, tzinfo=UTC)
        first = buffer.submit(submission("s", 50, t0))
        assert buffer.wait(first, 10) and first.outcome == "committed"
        stoppable_pg.stop()
        during = [buffer.submit(submission("s", 50, t0 + timedelta(minutes=k))) for k in range(1, 5)]
        assert buffer.flush(timeout=1.0) is False  # cannot complete while the server is down
        deadline = time.monotonic() + 30
        while buffer.stats.failed_attempts < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert all(not s.done.is_set() for s in during)  # nothing claimed written
        assert buffer.status()["pending_records"] == 200
        assert buffer.stats.failed_attempts >= 2 and buffer.stats.last_error
        stoppable_pg.start()
        assert buffer.flush(timeout=30)
        assert all(s.outcome == "committed" for s in during)
        assert count(stoppable_pg.url) == 250
    finally:
        buffer.close(5)
        pool.close()


def test_buffer_is_bounded(stoppable_pg):
    pool = make_pool(stoppable_pg.url, 1, 2)
    stoppable_pg.stop()
    buffer = BatchBuffer(PostgresSink(pool), max_pending=100, max_retries=1, retry_base_delay=0.05,
                         retry_max_delay=0.2)
    buffer.start()
    try:
        from backend.buffer import BufferFull

        buffer.submit(submission("s", 60, datetime(2026, 11, 23, tzinfo=UTC)))
        raised = False
        try:
            buffer.submit(submission("s", 60, datetime(2026, 11, 23, 1, tzinfo=UTC)))
        except BufferFull:
            raised = True
        assert raised
        assert buffer.pending_rows <= 100
    finally:
        stoppable_pg.start()
        buffer.close(10)
        pool.close()


def test_concurrent_flushers_on_the_same_rows_stay_idempotent(database_url, db):
    # Two workers (two buffers, two pools) writing overlapping batches at the same time.
    pools = [make_pool(database_url, 1, 2) for _ in range(2)]
    buffers = [BatchBuffer(PostgresSink(p), batch_size=50, flush_interval=0.01) for p in pools]
    for b in buffers:
        b.start()
    t0 = datetime(2026, 11, 23, 9, tzinfo=UTC)
    try:
        def post(b: BatchBuffer) -> None:
            for k in range(20):
                s = b.submit(submission(f"dev{k % 3}", 30, t0 + timedelta(minutes=k)))
                assert b.wait(s, 10) and s.outcome == "committed"

        threads = [threading.Thread(target=post, args=(b,)) for b in buffers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        distinct = db.execute("SELECT count(*) FROM (SELECT DISTINCT device_id, metric, ts"
                              " FROM telemetry_readings) x").fetchone()[0]
        assert db.execute("SELECT count(*) FROM telemetry_readings").fetchone()[0] == distinct == 20 * 30
    finally:
        for b, p in zip(buffers, pools, strict=True):
            b.close(5)
            p.close()
