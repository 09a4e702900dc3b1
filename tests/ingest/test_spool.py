"""The write-ahead spool on its own: framing, damage, bounds, locks, adoption and replay.

Everything runs against real files and the real test PostgreSQL; "dead workers" are real
processes that exit (their flock goes with them).
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backend.ingest.buffer import BatchBuffer
from backend.ingest.circuit import CircuitBreaker
from backend.ingest.deadline import DeadlineRunner
from backend.ingest.observers import WriteObservers
from backend.ingest.parsing import ParseError, Reading
from backend.ingest.replay import Replayer
from backend.ingest.sinks import Submission
from backend.ingest.sinks.postgres import PostgresSink
from backend.ingest.spool import (
    HEADER,
    Spool,
    SpoolFull,
    decode_batch,
    encode_batch,
    frame,
    iter_spans,
    list_segments,
    read_checkpoint_full,
    write_checkpoint_full,
)
from backend.ingest.spool.checkpoint import CHECKPOINT_BYTES, SLOT_STRIDE, checkpoint_path
from backend.store.pool import make_pool

BASE = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)


def make_sub(device: str, first: int, n: int, received: datetime | None = None, raw: bool = True) -> Submission:
    readings = [Reading(device, "seq", BASE + timedelta(milliseconds=s), float(s)) for s in range(first, first + n)]
    body = "\n".join(f"device_id:{device},seq:{s}" for s in range(first, first + n))
    return Submission(request_id=uuid.uuid4(), readings=readings,
                      received_at=received or datetime(2026, 1, 5, 12, 0, 1, 123456, tzinfo=UTC),
                      raw_payload=body if raw else None, content_type="text/plain", device_id=device,
                      parser_version="2.0", data_source="test")


def open_spool(root: Path, **kw) -> Spool:
    return Spool(root, max_bytes=kw.pop("max_bytes", 64 * 2**20), min_free_bytes=kw.pop("min_free_bytes", 0),
                 **kw).open()


# ---- framing and encoding ----------------------------------------------------------------


def test_batch_round_trip_keeps_times_ids_raw_and_rejects():
    sub = make_sub("d1", 1, 3)
    sub.rejected = [ParseError(4, "bad line", "x:y:z")]
    sub.readings.append(Reading("d1", "mode", BASE, None, "AUTO"))
    (back,) = decode_batch(encode_batch([sub]))
    assert back.request_id == sub.request_id
    assert back.received_at == sub.received_at
    assert back.readings == sub.readings  # measurement times to the microsecond, text values too
    assert back.raw_payload == sub.raw_payload
    assert back.rejected == sub.rejected
    assert (back.device_id, back.parser_version, back.data_source) == ("d1", "2.0", "test")


def test_batch_round_trip_keeps_positions_and_server_time_flags():
    # Without the flags a replayed server-timed reading that meets another request's reading
    # at the same microsecond would be judged by value (merged when equal) instead of moved.
    sub = make_sub("d1", 1, 3)
    sub.positions = [1, 2, 3]
    sub.server_timed = [True, False, True]
    (back,) = decode_batch(encode_batch([sub]))
    assert back.positions == [1, 2, 3] and back.server_timed == [True, False, True]


def _segment(records: list[bytes]) -> bytes:
    return b"".join(frame(r) for r in records)


def test_reader_skips_a_flipped_byte_and_a_torn_tail_and_keeps_the_rest():
    payloads = [f"record-{i}".encode() * 20 for i in range(6)]
    data = bytearray(_segment(payloads))
    second = len(frame(payloads[0]))
    data[second + HEADER.size + 5] ^= 0x40  # flip a payload byte of record 1
    data = bytes(data[:-7])  # tear the last record
    spans = list(iter_spans(data))
    good = [s.payload for s in spans if s.payload is not None]
    bad = [s.problem for s in spans if s.problem is not None]
    assert good == payloads[0:1] + payloads[2:5]
    assert bad == ["checksum mismatch", "truncated record"]


def test_reader_resyncs_after_a_damaged_length_field():
    payloads = [f"r{i}".encode() * 50 for i in range(4)]
    data = bytearray(_segment(payloads))
    off = len(frame(payloads[0]))
    data[off + 4:off + 8] = (10**6).to_bytes(4, "little")  # length now points past the end
    spans = list(iter_spans(bytes(data)))
    assert [s.payload for s in spans if s.payload] == [payloads[0], payloads[2], payloads[3]]
    assert sum(1 for s in spans if s.problem) == 1


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(min_size=1, max_size=60), min_size=1, max_size=8),
       st.lists(st.tuples(st.integers(min_value=0), st.integers(min_value=0, max_value=255)), max_size=4),
       st.integers(min_value=0, max_value=40))
def test_reader_never_invents_or_reorders_records(payloads, flips, cut):
    data = bytearray(_segment(payloads))
    for pos, value in flips:
        data[pos % len(data)] = value
    data = bytes(data[:max(0, len(data) - cut)])
    spans = list(iter_spans(data))
    got = [s.payload for s in spans if s.payload is not None]
    # Whatever the damage: only original records, in their order, and spans tile the data.
    it = iter(payloads)
    assert all(any(g == p for p in it) for g in got)
    if data:
        assert [s.offset for s in spans] == [0] + [s.end for s in spans[:-1]]
        assert spans[-1].end == len(data)
    else:
        assert spans == []


# ---- appending, rolling, bounds ----------------------------------------------------------


def test_append_rolls_segments_by_size_and_survives_reopen(tmp_path):
    spool = open_spool(tmp_path, segment_bytes=4096)
    for i in range(30):
        spool.append([make_sub("d", i * 10, 10)])
    segs = list_segments(spool.dir)
    assert len(segs) > 3
    assert all(p.stat().st_size <= 4096 + 4096 for _, p in segs)
    records = [s for _, p in segs for s in iter_spans(p.read_bytes())]
    assert len(records) == 30 and all(r.payload for r in records)
    st = spool.status()
    assert st["own_pending_readings"] == 300 and st["depth_segments"] == len(segs)
    assert st["oldest_unflushed_age_s"] > 0


def test_size_bound_refuses_and_counts(tmp_path):
    spool = open_spool(tmp_path, max_bytes=20_000)
    appended = 0
    with pytest.raises(SpoolFull, match="SPOOL_MAX_BYTES"):
        while True:
            spool.append([make_sub("d", appended * 20, 20)])
            appended += 1
    assert spool.usage()["bytes"] <= 20_000
    assert not spool.accepts(1)
    assert spool.status()["refused_readings_total"] == 20


def test_nearly_full_disk_refuses(tmp_path):
    free = Spool(tmp_path, max_bytes=1, min_free_bytes=0).free_bytes()
    spool = open_spool(tmp_path, min_free_bytes=free + 2**30)
    with pytest.raises(SpoolFull, match="disk nearly full"):
        spool.append([make_sub("d", 0, 5)])
    assert list_segments(spool.dir) == []


def test_disabled_spool_refuses(tmp_path):
    spool = open_spool(tmp_path, max_bytes=0)
    assert not spool.accepts(1)
    with pytest.raises(SpoolFull, match="disabled"):
        spool.append([make_sub("d", 0, 1)])


def test_bound_holds_across_workers(tmp_path):
    a = open_spool(tmp_path, max_bytes=30_000)
    b = open_spool(tmp_path, max_bytes=30_000)
    refused = 0
    for i in range(200):
        try:
            (a if i % 2 else b).append([make_sub("d", i * 20, 20)])
        except SpoolFull:
            refused += 1
    assert refused > 0
    assert a.usage()["bytes"] <= 30_000


# ---- locks and adoption ------------------------------------------------------------------


def _child_spools_and_dies(root: str, first: int, n: int) -> None:
    spool = Spool(root, max_bytes=2**30, min_free_bytes=0).open()
    for i in range(n):
        spool.append([make_sub("dead", first + i * 10, 10)])
    os._exit(0)  # no close(): the lock goes with the process, like kill -9


def _spool_from_dead_worker(root: Path, first: int = 0, n: int = 5) -> None:
    ctx = multiprocessing.get_context("fork")
    p = ctx.Process(target=_child_spools_and_dies, args=(str(root), first, n))
    p.start()
    p.join(30)
    assert p.exitcode == 0


def test_live_worker_directory_cannot_be_adopted_dead_one_can(tmp_path):
    live = open_spool(tmp_path)
    live.append([make_sub("live", 0, 3)])
    other = open_spool(tmp_path)
    assert other.try_adopt(live.dir) is None  # owner alive: its lock is held
    _spool_from_dead_worker(tmp_path)
    dead_dirs = [d for d in other.orphan_dirs() if d != live.dir]
    assert len(dead_dirs) == 1
    adoption = other.try_adopt(dead_dirs[0])
    assert adoption is not None and len(adoption.segments()) == 1
    assert live.try_adopt(dead_dirs[0]) is None  # one adopter at a time
    adoption.release(remove=False)


@pytest.fixture
def pool(database_url, db):
    p = make_pool(database_url, 1, 6)
    yield p
    p.close()


def replayer_for(spool: Spool, pool, chunk_rows: int = 25, scan_interval: float = 1.0) -> tuple[Replayer, BatchBuffer]:
    """A replayer for `spool` next to a started live buffer, wired the way WritePath.build does."""
    sink, runner, observers = PostgresSink(pool), DeadlineRunner(), WriteObservers()
    circuit = CircuitBreaker(sink.ping, runner)
    buffer = BatchBuffer(sink, circuit=circuit, spool=spool, observers=observers, runner=runner, batch_size=50,
                         flush_interval=0.05)
    buffer.start()
    rep = Replayer(spool, PostgresSink(pool, replay=True), circuit, buffer, observers, runner=runner,
                   chunk_rows=chunk_rows, scan_interval=scan_interval)
    return rep, buffer


def _rows(db, device: str) -> list[tuple]:
    return db.execute("SELECT value::int, count(*), min(ts), min(received_at) FROM telemetry_readings"
                      " WHERE device_id = %s GROUP BY 1 ORDER BY 1", (device,)).fetchall()


def test_dead_workers_spool_is_replayed_exactly_once_by_racing_adopters(tmp_path, pool, db):
    _spool_from_dead_worker(tmp_path, n=40)  # 400 readings
    spools = [open_spool(tmp_path) for _ in range(4)]
    reps = [replayer_for(s, pool) for s in spools]
    barrier = threading.Barrier(len(reps))

    def go(rep: Replayer) -> None:
        barrier.wait()
        rep.run_once()

    threads = [threading.Thread(target=go, args=(r,)) for r, _ in reps]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    rows = _rows(db, "dead")
    assert len(rows) == 400 and all(n == 1 for _, n, _, _ in rows)
    # Exactly once: all adopters together replayed each record once, nothing was re-sent.
    c = [s.counters for s in spools]
    assert sum(x.adopted_dirs for x in c) == 1
    assert sum(x.replayed_readings for x in c) == 400
    assert sum(x.replay_inserted for x in c) == 400 and sum(x.replay_duplicates for x in c) == 0
    # Original measurement and receive times, and the dead directory is gone.
    assert all(ts == BASE + timedelta(milliseconds=v) for v, _, ts, _ in rows)
    assert {rx for *_, rx in rows} == {datetime(2026, 1, 5, 12, 0, 1, 123456, tzinfo=UTC)}
    assert [d for d in spools[0].orphan_dirs() if d not in {s.dir for s in spools}] == []
    for _, buf in reps:
        buf.close(5)


def test_replay_after_crash_between_commit_and_checkpoint_makes_no_duplicates(tmp_path, pool, db):
    spool = open_spool(tmp_path)
    for i in range(10):
        spool.append([make_sub("cp", i * 10, 10)])
    (path,) = spool.take_own_segments()
    # Commit the first 3 records (30 readings) the way the replayer does, but "crash"
    # before the checkpoint: the checkpoint stays at 0.
    first3 = [s for span in list(iter_spans(path.read_bytes()))[:3] for s in decode_batch(span.payload)]
    PostgresSink(pool).write(first3)
    assert read_checkpoint_full(path)[0] == 0
    rep, buf = replayer_for(spool, pool)
    assert rep.run_once()
    rows = _rows(db, "cp")
    assert len(rows) == 100 and all(n == 1 for _, n, _, _ in rows)
    assert spool.counters.replay_duplicates == 30 and spool.counters.replay_inserted == 70
    # raw payloads are not stored twice either
    assert db.execute("SELECT count(*), count(DISTINCT request_id) FROM telemetry_raw").fetchone() == (10, 10)
    assert not path.exists()
    buf.close(5)


def test_damaged_spool_delivers_every_intact_record_and_counts_the_rest(tmp_path, pool, db):
    root = tmp_path
    dead = open_spool(root, segment_bytes=4096)
    for i in range(24):
        dead.append([make_sub("dmg", i * 10, 10)])
    segs = [p for _, p in list_segments(dead.dir)]
    assert len(segs) >= 4
    per_seg = {p: [s for s in iter_spans(p.read_bytes())] for p in segs}
    # damage: flip a byte in a record of segment 0, delete segment 1, tear segment -1's tail
    victim = per_seg[segs[0]][1]
    data = bytearray(segs[0].read_bytes())
    data[victim.offset + HEADER.size + 3] ^= 0xFF
    segs[0].write_bytes(bytes(data))
    segs[1].unlink()
    last = segs[-1].read_bytes()
    segs[-1].write_bytes(last[:-5])
    dead_dir = dead.dir
    os.close(dead._lockfd)  # the owner dies
    dead._lockfd = None
    expect = set()
    for p in segs[2:-1]:
        expect |= {int(r.value) for s in per_seg[p] for sub in decode_batch(s.payload) for r in sub.readings}
    for p, drop in ((segs[0], 1), (segs[-1], len(per_seg[segs[-1]]) - 1)):
        for i, s in enumerate(per_seg[p]):
            if i != drop:
                expect |= {int(r.value) for sub in decode_batch(s.payload) for r in sub.readings}

    live = open_spool(root)
    rep, buf = replayer_for(live, pool)
    assert rep.run_once()
    got = {v for v, n, _, _ in _rows(db, "dmg")}
    assert got == expect
    st = live.status()
    assert st["corrupt_records_total"] == 2 and st["missing_segments_total"] == 1
    assert st["corrupt_on_disk"] == {"segments": 2, "records": 2, "bytes": st["corrupt_on_disk"]["bytes"],
                                    "missing_segments": 1}
    assert not dead_dir.exists()
    assert len(list((root / "corrupt").glob("*.wal"))) == 2
    # A second pass finds nothing to do: no crash loop, no re-delivery.
    assert not rep.run_once()
    buf.close(5)


# ---- checkpoints: in place, torn writes, old format -------------------------------------


def test_checkpoint_is_allocated_with_its_segment_and_overwritten_in_place(tmp_path):
    spool = open_spool(tmp_path)
    spool.append([make_sub("cp", 0, 3)])
    (path,) = spool.take_own_segments()
    cp = checkpoint_path(path)
    before = os.stat(cp)
    assert before.st_size == CHECKPOINT_BYTES and read_checkpoint_full(path) == (0, 0, 0)
    for offset in (100, 250, 400, 900):
        write_checkpoint_full(path, offset, 1, 7)
        after = os.stat(cp)
        # the same inode, the same size, the same blocks: nothing allocated, nothing renamed
        assert (after.st_ino, after.st_size, after.st_blocks) == (before.st_ino, before.st_size, before.st_blocks)
        assert read_checkpoint_full(path) == (offset, 1, 7)
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_torn_checkpoint_write_falls_back_to_the_previous_position_never_past_it(tmp_path):
    spool = open_spool(tmp_path)
    spool.append([make_sub("cp", 0, 3)])
    (path,) = spool.take_own_segments()
    cp = checkpoint_path(path)
    write_checkpoint_full(path, 100)
    write_checkpoint_full(path, 200)  # generation 2: slot 0
    pristine = cp.read_bytes()
    for cut in range(1, 40):  # the write of generation 3 (a 40-byte slot, slot 1) torn after `cut` bytes
        write_checkpoint_full(path, 300)
        torn = bytearray(cp.read_bytes())
        torn[SLOT_STRIDE + cut:2 * SLOT_STRIDE] = pristine[SLOT_STRIDE + cut:2 * SLOT_STRIDE]
        cp.write_bytes(bytes(torn))
        assert read_checkpoint_full(path)[0] == 200  # the torn slot is not trusted
        cp.write_bytes(pristine)
    cp.write_bytes(b"\xff" * CHECKPOINT_BYTES)  # both slots destroyed: from the start, re-sending only
    assert read_checkpoint_full(path) == (0, 0, 0)


def test_checkpoint_of_an_older_version_is_read_and_then_updated(tmp_path):
    spool = open_spool(tmp_path)
    spool.append([make_sub("cp", 0, 3)])
    (path,) = spool.take_own_segments()
    checkpoint_path(path).write_text("123 1 9")
    assert read_checkpoint_full(path) == (123, 1, 9)
    write_checkpoint_full(path, 456, 1, 9)
    assert read_checkpoint_full(path) == (456, 1, 9)
    checkpoint_path(path).unlink()  # a segment that never had one
    write_checkpoint_full(path, 789)
    assert read_checkpoint_full(path)[0] == 789
