"""The batch buffer against a real PostgreSQL behind a proxy the test can cut.

What a waiting request is told is the contract: "committed" or "spooled" (durable), or
"failed"/BufferFull (503). Nothing here mocks the database, the buffer or the spool.
"""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from backend.config import Config
from backend.ingest.buffer import BatchBuffer, BufferFull
from backend.ingest.observers import WriteObservers
from backend.ingest.parsing import Reading
from backend.ingest.sinks import Submission
from backend.ingest.sinks.postgres import PostgresSink
from backend.ingest.write_path import WritePath
from backend.store.pool import make_pool
from tests.live_server import wait_for

BASE = datetime(2026, 2, 1, tzinfo=UTC)
_seq = iter(range(10**9))


def sub(device: str = "b1", n: int = 5, bad: bool = False) -> Submission:
    readings = []
    for _ in range(n):
        s = next(_seq)
        readings.append(Reading(device, "seq", BASE + timedelta(milliseconds=s), None if bad else float(s)))
    return Submission(request_id=uuid.uuid4(), readings=readings, received_at=datetime.now(UTC),
                      raw_payload="x", device_id=device, parser_version="2.0", data_source="test")


@pytest.fixture
def make_write_path(db_proxy, db, tmp_path):
    """Factory: a started write path on the proxied database, built by WritePath.build like the app's."""
    made = []

    def factory(spool: bool = True, max_bytes: int = 64 * 2**20, chunk_rows: int = 100, write_timeout: float = 1.0,
                probe_timeout: float = 1.0, observers: WriteObservers | None = None, **kw) -> WritePath:
        pool = make_pool(db_proxy.url, 1, 4)
        fields = dict(batch_size=100, flush_max_readings=100, flush_interval=0.05, flush_linger=0.0, max_retries=2,
                      retry_base_delay=0.01, retry_max_delay=0.2, ack_timeout=2 * write_timeout,
                      spool_dir=str(tmp_path / f"spool{len(made)}") if spool else "off", spool_max_bytes=max_bytes,
                      spool_min_free_bytes=0, data_dir=str(tmp_path))
        fields.update(kw)
        wp = WritePath.build(Config().replace(**fields), pool, observers or WriteObservers(),
                             probe_timeout=probe_timeout, replay_scan_interval=0.1, replay_chunk_rows=chunk_rows)
        made.append((wp, pool))
        return wp.start()

    yield factory
    db_proxy.up()
    for wp, pool in made:
        wp.close(5)
        pool.close()


@pytest.fixture
def make_buffer(make_write_path):
    return lambda **kw: make_write_path(**kw).buffer


def put(buf: BatchBuffer, s: Submission, timeout: float = 10) -> str:
    buf.submit(s)
    assert buf.wait(s, timeout), "the buffer must answer within the wait"
    return s.outcome


def count(db, device: str) -> tuple[int, int]:
    return db.execute("SELECT count(*), count(DISTINCT ts) FROM telemetry_readings WHERE device_id = %s",
                      (device,)).fetchone()


def test_healthy_database_commits(make_buffer, db):
    buf = make_buffer()
    assert put(buf, sub("ok")) == "committed"
    assert count(db, "ok") == (5, 5)
    assert buf.status()["circuit"]["state"] == "closed"


def test_outage_spools_then_replays_each_reading_once(make_buffer, db, db_proxy):
    buf = make_buffer()
    db_proxy.down()
    outcomes = [put(buf, sub("out")) for _ in range(20)]
    assert set(outcomes) == {"spooled"}
    st = buf.status()
    assert st["circuit"]["state"] == "open"
    # Once the circuit is open, batches go straight to the spool: no more write attempts.
    attempts = st["failed_attempts_total"]
    for _ in range(10):
        assert put(buf, sub("out")) == "spooled"
    assert buf.status()["failed_attempts_total"] == attempts
    db_proxy.up()
    assert wait_for(lambda: count(db, "out")[0] == 150)
    assert wait_for(lambda: buf.spool.usage()["segments"] == 0)
    assert count(db, "out") == (150, 150)
    assert buf.status()["circuit"]["state"] == "closed"
    assert buf.spool.status()["replayed_readings_total"] == 150


def test_replayed_chunks_reach_the_write_observers(make_buffer, db, db_proxy):
    # The alert engine observes committed writes; readings that went through the spool must
    # reach it too (it skips old backlog by measurement time itself).
    seen: list[uuid.UUID] = []
    observers = WriteObservers()
    observers.register(lambda batch, result: seen.extend(s.request_id for s in batch))
    buf = make_buffer(observers=observers)
    db_proxy.down()
    subs = [sub("obs") for _ in range(5)]
    assert [put(buf, s) for s in subs] == ["spooled"] * 5
    assert seen == []
    db_proxy.up()
    assert wait_for(lambda: count(db, "obs")[0] == 25)
    assert wait_for(lambda: {s.request_id for s in subs} <= set(seen))


def test_probe_delays_grow_exponentially_with_jitter_up_to_the_cap(make_buffer, db_proxy):
    buf = make_buffer(retry_base_delay=0.01, retry_max_delay=0.16, probe_timeout=0.5)
    db_proxy.down()
    assert put(buf, sub("probe")) == "spooled"
    assert wait_for(lambda: len(buf.circuit_status()["outages"][-1]["probes"]) >= 9, 60)
    probes = buf.circuit_status()["outages"][-1]["probes"]
    delays = [p["delay_s"] for p in probes]
    for i, p in enumerate(probes):
        cap_i = min(0.16, 0.01 * 2**i)
        assert p["attempt"] == i and p["delay_cap_s"] == pytest.approx(cap_i)
        assert cap_i / 2 - 1e-4 <= p["delay_s"] <= cap_i + 1e-4  # equal jitter in [cap/2, cap]
        assert not p["ok"]
    assert max(delays) <= 0.16 + 1e-4 and probes[-1]["delay_cap_s"] == pytest.approx(0.16)
    assert len({round(d, 4) for d in delays[4:]}) > 1  # jittered, not a fixed schedule
    db_proxy.up()
    assert wait_for(lambda: buf.status()["circuit"]["state"] == "closed")
    assert buf.circuit_status()["outages"][-1]["probes"][-1]["ok"]


def test_full_spool_refuses_with_retry_after_and_stays_bounded(make_buffer, db, db_proxy):
    buf = make_buffer(max_bytes=6000, buffer_max_readings=500)
    db_proxy.down()
    subs: list[Submission] = []
    refused = None
    for _ in range(60):
        s = sub("full")
        try:
            buf.submit(s)
        except BufferFull as exc:
            refused = exc
            break
        subs.append(s)
        buf.wait(s, 2)
    assert refused is not None and "SPOOL_MAX_BYTES" in str(refused) and refused.retry_after >= 1
    assert any(s.outcome == "spooled" for s in subs)
    # Never anything but "spooled" (durable) or "pending" (not acknowledged: 503 at the ack timeout).
    assert {s.outcome for s in subs} <= {"spooled", "pending"}
    assert buf.pending_rows <= 500 and buf.spool.usage()["bytes"] <= 6000
    db_proxy.up()
    # Held readings are written once the database is back, spooled ones are replayed.
    assert wait_for(lambda: count(db, "full")[0] == 5 * len(subs))
    assert count(db, "full") == (5 * len(subs), 5 * len(subs))


def test_no_spool_means_503_not_2xx(make_buffer, db, db_proxy):
    buf = make_buffer(spool=False)
    db_proxy.down()
    s = sub("nospool")
    buf.submit(s)
    assert not buf.wait(s, 4) and s.outcome == "pending"  # not acknowledged: the request gets 503
    with pytest.raises(BufferFull, match="no spool"):
        buf.submit(sub("nospool"))  # circuit open: refused at once
    assert buf.pending_rows == 5  # held in memory, within BUFFER_MAX_READINGS
    db_proxy.up()
    assert buf.wait(s, 30) and s.outcome == "committed"
    assert count(db, "nospool") == (5, 5)


def test_blackholed_database_does_not_hold_requests(make_buffer, db, db_proxy):
    buf = make_buffer(write_timeout=0.5)
    assert put(buf, sub("bh")) == "committed"  # a pooled connection exists and then hangs
    db_proxy.blackhole()
    s = sub("bh")
    buf.submit(s)
    assert buf.wait(s, 5.0) and s.outcome == "spooled"
    db_proxy.up()
    assert wait_for(lambda: count(db, "bh")[0] == 10, 60)
    assert count(db, "bh") == (10, 10)


def test_refused_request_is_isolated_from_its_batch(make_buffer, db):
    buf = make_buffer()
    good = [sub("iso") for _ in range(3)]
    bad = sub("iso", bad=True)  # violates the one-value check: the database refuses it
    for s in [good[0], bad, *good[1:]]:
        buf.submit(s)
    for s in [*good, bad]:
        assert buf.wait(s, 10)
    assert [s.outcome for s in good] == ["committed"] * 3
    assert bad.outcome == "failed" and "refused" in bad.error
    assert count(db, "iso") == (15, 15)


def test_replay_of_a_backlog_does_not_starve_live_writes(make_buffer, db, db_proxy):
    buf = make_buffer(chunk_rows=25)
    db_proxy.down()
    for _ in range(150):  # 750 readings = 30 replay chunks
        assert put(buf, sub("backlog")) == "spooled"
    db_proxy.up()
    assert wait_for(buf.sink_available)  # (until then live readings would join the backlog)
    live_while_backlog = 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        backlog = buf.spool.usage()["segments"]
        if put(buf, sub("live")) == "committed" and backlog:
            live_while_backlog += 1
        if not backlog:
            break
    assert live_while_backlog > 0
    assert wait_for(lambda: count(db, "backlog")[0] == 750)
    assert count(db, "backlog") == (750, 750)


def test_close_during_outage_spools_whatever_is_pending(make_write_path, db_proxy, tmp_path):
    wp = make_write_path()
    buf = wp.buffer
    db_proxy.down()
    subs = [sub("closing") for _ in range(5)]
    for s in subs:
        buf.submit(s)
    t = threading.Thread(target=wp.close, args=(10,))
    t.start()
    t.join(30)
    assert {s.outcome for s in subs} == {"spooled"}
    left = sum(len(list(d.glob("seg-*.wal"))) for d in buf.spool.root.glob("w-*"))
    assert left >= 1  # kept on disk for the next worker to adopt


def test_linger_groups_concurrent_requests_and_skips_a_lone_one(make_buffer, db):
    # A linger (3 s) longer than the lone request may wait (2 s): it must not linger when
    # nobody else is coming, while queued concurrent requests must share one flush.
    buf = make_buffer(spool=False, flush_linger=3.0, flush_interval=60.0)
    lone = buf.submit(sub("lone", 2))
    assert buf.wait(lone, 2.0) and lone.outcome == "committed"
    flushes = buf.stats.flushes
    subs = [buf.submit(sub(f"c{i}", 2)) for i in range(4)]
    waiting = [threading.Thread(target=buf.wait, args=(s, 15.0)) for s in subs]
    for t in waiting:
        t.start()
    for t in waiting:
        t.join()
    assert all(s.outcome == "committed" for s in subs)
    assert buf.stats.flushes == flushes + 1  # four queued requests, one commit
    assert db.execute("SELECT count(*) FROM telemetry_readings WHERE device_id LIKE 'c%'").fetchone()[0] == 8


def test_a_flush_carries_queued_requests_up_to_max_batch_rows(db_proxy, db):
    # Requests queued while a flush was written go together in the next one, up to
    # max_batch_rows (whole requests only); BATCH_SIZE only decides when a flush starts.
    pool = make_pool(db_proxy.url, 1, 2)
    try:
        for max_rows, flushes, rows in ((45, 2, [40, 20]), (0, 6, [10] * 6)):
            buf = BatchBuffer(PostgresSink(pool), batch_size=10, max_batch_rows=max_rows, flush_interval=0.05)
            subs = [buf.submit(sub(f"m{max_rows}", 10)) for _ in range(6)]  # queued before the flusher runs
            buf.start()
            assert all(buf.wait(s, 10) and s.outcome == "committed" for s in subs)
            assert buf.stats.flushes == flushes
            assert buf.stats.written == sum(rows) == 60
            assert buf.stats.last_flush_rows == rows[-1]
            buf.close(5)
    finally:
        pool.close()
