"""The PostgreSQL sink and buffer against a server that goes away and comes back."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import psycopg

from backend.ingest.buffer import BatchBuffer
from backend.ingest.parsing import Reading
from backend.ingest.sinks import Submission
from backend.ingest.sinks.postgres import PostgresSink
from backend.store.pool import make_pool


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
        from backend.ingest.buffer import BufferFull

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


def test_big_confirmed_batch_is_copied_and_a_resend_is_stored_once(database_url, db):
    # >= COPY_MIN_READINGS readings of confirmed types go in by COPY; when some of them are
    # already stored the COPY fails on the unique key and the idempotent path stores the rest.
    from backend.ingest.sinks.postgres import COPY_MIN_READINGS

    pool = make_pool(database_url, 1, 2)
    sink = PostgresSink(pool)
    try:
        t0 = datetime(2026, 11, 20, tzinfo=UTC)
        n = COPY_MIN_READINGS + 44
        first = submission("copy-dev", n, t0)
        first.typed = True
        r1 = sink.write([first])
        assert (r1.method, r1.inserted, r1.duplicates) == ("copy", n, 0)
        assert r1.per_request[first.request_id] == (n, 0)

        again = submission("copy-dev", n + 100, t0)  # the same n readings, then 100 new ones
        again.typed = True
        r2 = sink.write([again])
        assert (r2.method, r2.inserted, r2.duplicates) == ("insert", 100, n)
        assert r2.per_request[again.request_id] == (100, 0)

        small = submission("copy-dev", 10, t0 + timedelta(days=1))
        small.typed = True
        assert sink.write([small]).method == "insert"  # below the threshold: one round trip

        rows = db.execute("SELECT count(*), count(DISTINCT ts) FROM telemetry_readings"
                          " WHERE device_id = 'copy-dev'").fetchone()
        assert rows == (n + 110, n + 110)
        latest = db.execute("SELECT ts, value FROM device_latest WHERE device_id = 'copy-dev'").fetchone()
        assert latest == (t0 + timedelta(days=1, seconds=9), 9.0)
        assert db.execute("SELECT count(*) FROM devices WHERE device_id = 'copy-dev'").fetchone()[0] == 1
    finally:
        pool.close()


def test_unconfirmed_batch_is_type_checked_in_the_database(database_url, db):
    # Readings the worker could not check (spool replay, catalogue unreachable) are checked
    # by telemetry_write(): a value of the wrong type goes to quarantine, the rest is stored.
    pool = make_pool(database_url, 1, 2)
    sink = PostgresSink(pool)
    try:
        t0 = datetime(2026, 11, 21, tzinfo=UTC)
        readings = [Reading("chk", "alt", t0, 1.0), Reading("chk", "alt", t0 + timedelta(seconds=1), None, "high"),
                    Reading("chk", "brand_new_metric", t0, 2.5)]
        sub = Submission(request_id=uuid.uuid4(), readings=readings, received_at=datetime.now(UTC))
        result = sink.write([sub])
        assert (result.inserted, result.quarantined, result.duplicates) == (2, 1, 0)
        assert result.per_request[sub.request_id] == (2, 1)
        reason = db.execute("SELECT reason FROM telemetry_quarantine WHERE request_id = %s",
                            (sub.request_id,)).fetchone()[0]
        assert "alt is number" in reason
        assert db.execute("SELECT value_type FROM telemetry_fields WHERE name = 'brand_new_metric'"
                          ).fetchone()[0] == "number"
        # the mistyped reading is newer, but only readings that were stored count as latest
        latest = db.execute("SELECT metric, ts, value, value_text FROM device_latest WHERE device_id = 'chk'"
                            " ORDER BY metric").fetchall()
        assert latest == [("alt", t0, 1.0, None), ("brand_new_metric", t0, 2.5, None)]
        older = Submission(request_id=uuid.uuid4(), readings=[Reading("chk", "alt", t0 - timedelta(hours=1), 7.0)],
                           received_at=datetime.now(UTC), typed=True)
        sink.write([older])  # a backlog reading never replaces a newer latest value
        assert db.execute("SELECT value FROM device_latest WHERE device_id = 'chk' AND metric = 'alt'"
                          ).fetchone()[0] == 1.0
    finally:
        pool.close()


def server_timed(device: str, start: datetime, values: list[float]) -> Submission:
    """A request whose messages had no time: consecutive microseconds from `start`."""
    readings = [Reading(device, "alt", start + timedelta(microseconds=i), v) for i, v in enumerate(values)]
    return Submission(request_id=uuid.uuid4(), readings=readings, received_at=datetime.now(UTC), typed=True,
                      positions=list(range(1, len(values) + 1)), server_timed=[True] * len(values))


def stored(db, device: str) -> list[tuple]:
    return db.execute("SELECT ts, value, request_id FROM telemetry_readings WHERE device_id = %s ORDER BY ts",
                      (device,)).fetchall()


def test_server_timed_readings_of_two_workers_on_the_same_microseconds_are_both_kept(database_url, db):
    # Two workers hand out microseconds independently; the same values at the same
    # server-assigned times are still two observations each, never re-sends.
    pool = make_pool(database_url, 1, 2)
    sink = PostgresSink(pool)
    try:
        t0 = datetime(2026, 11, 22, 8, tzinfo=UTC)
        a, b = server_timed("two", t0, [5.0, 6.0]), server_timed("two", t0, [5.0, 6.0])
        assert sink.write([a]).per_request[a.request_id] == (2, 0)
        rb = sink.write([b])
        assert (rb.per_request[b.request_id], rb.duplicates, rb.conflicts) == ((2, 0), 0, {})
        us = timedelta(microseconds=1)
        assert [(ts, v, rid) for ts, v, rid in stored(db, "two")] == [
            (t0, 5.0, a.request_id), (t0 + us, 6.0, a.request_id),
            (t0 + 2 * us, 5.0, b.request_id), (t0 + 3 * us, 6.0, b.request_id)]
        # A retry of b's write (its commit was not confirmed) finds b's moved rows: duplicates.
        again = sink.write([b])
        assert (again.inserted, again.duplicates) == (0, 2) and len(stored(db, "two")) == 4
        # Both requests in one flush again (a third worker's view): both kept, once each.
        c = server_timed("two", t0, [5.0, 6.0])
        rc = sink.write([c, b])
        assert (rc.per_request[c.request_id], rc.per_request[b.request_id]) == ((2, 0), (0, 0))
        assert len(stored(db, "two")) == 6
    finally:
        pool.close()


def test_a_device_time_wins_its_key_over_a_server_assigned_one_in_the_same_batch(database_url, db):
    pool = make_pool(database_url, 1, 2)
    sink = PostgresSink(pool)
    try:
        t0 = datetime(2026, 11, 22, 9, tzinfo=UTC)
        untimed = server_timed("mix", t0, [1.0])
        timed = Submission(request_id=uuid.uuid4(), readings=[Reading("mix", "alt", t0, 2.0)],
                           received_at=datetime.now(UTC), typed=True, positions=[1], server_timed=[False])
        result = sink.write([untimed, timed])
        assert (result.inserted, result.duplicates, result.conflicts) == (2, 0, {})
        assert [(ts, v) for ts, v, _ in stored(db, "mix")] == [(t0, 2.0), (t0 + timedelta(microseconds=1), 1.0)]
    finally:
        pool.close()


def test_a_different_value_for_a_stored_key_is_a_conflict_also_on_the_copy_path(database_url, db):
    from backend.ingest.sinks.postgres import COPY_MIN_READINGS

    pool = make_pool(database_url, 1, 2)
    sink = PostgresSink(pool)
    try:
        t0 = datetime(2026, 11, 19, tzinfo=UTC)
        n = COPY_MIN_READINGS + 4
        first = submission("cc", n, t0)
        first.typed = True
        assert sink.write([first]).method == "copy"
        again = submission("cc", n, t0)  # the same keys; three values changed, -0.0 for 0.0 is the same
        again.readings[0] = again.readings[0]._replace(value=-0.0)
        for i in (3, 7, n - 1):
            again.readings[i] = again.readings[i]._replace(value=1000.0 + i)
        again.typed = True
        result = sink.write([again])
        assert (result.method, result.inserted, result.duplicates) == ("insert", 0, n - 3)
        assert [i for i, _ in result.conflicts[again.request_id]] == [3, 7, n - 1]
        assert result.per_request[again.request_id] == (0, 3)  # conflicts are quarantined
        assert db.execute("SELECT value FROM telemetry_readings WHERE device_id = 'cc' AND ts = %s",
                          (t0 + timedelta(seconds=3),)).fetchone() == (3.0,)
        reasons = [r[0] for r in db.execute("SELECT reason FROM telemetry_quarantine WHERE request_id = %s"
                                            " ORDER BY id", (again.request_id,))]
        assert reasons[0] == "conflict: (cc, alt, 2026-11-19T00:00:03.000000Z) already stored with value 3"
        assert len(reasons) == 3
    finally:
        pool.close()


def test_conflicts_are_found_in_batches_the_database_type_checks(database_url, db):
    pool = make_pool(database_url, 1, 2)
    sink = PostgresSink(pool)
    try:
        t0 = datetime(2026, 11, 18, tzinfo=UTC)
        sink.write([Submission(request_id=uuid.uuid4(), readings=[Reading("tc", "alt", t0, 1.0)],
                               received_at=datetime.now(UTC))])
        sub = Submission(request_id=uuid.uuid4(), received_at=datetime.now(UTC),
                         readings=[Reading("tc", "alt", t0, 2.0), Reading("tc", "alt", t0, 1.0),
                                   Reading("tc", "alt", t0 + timedelta(seconds=1), None, "high")])
        result = sink.write([sub])  # not typed: replayed from the spool, say
        assert (result.inserted, result.quarantined, result.duplicates) == (0, 2, 1)
        assert [i for i, _ in result.conflicts[sub.request_id]] == [0]
        assert db.execute("SELECT value FROM device_latest WHERE device_id = 'tc'").fetchone() == (1.0,)
    finally:
        pool.close()
