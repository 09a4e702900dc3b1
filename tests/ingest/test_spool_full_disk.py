"""A spool on a completely full disk (issue 11): the replay still drains it, ingest says so.

The disk is a real 2 MB tmpfs, filled to the last byte by the spool and by another file
that nobody removes; the database is real (a stoppable private cluster end to end, the
test database behind a cut proxy in the unit-level tests).
"""

from __future__ import annotations

import errno
import logging
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from backend.ingest.buffer import BatchBuffer, BufferFull
from backend.ingest.sinks.postgres import PostgresSink
from backend.ingest.spool import Spool, SpoolFull, list_segments
from backend.ingest.spool.checkpoint import checkpoint_path
from backend.store.pool import make_pool
from tests.ingest.test_reliability import all_statuses, assert_honest_503s, figures, start_load
from tests.ingest.test_spool import make_sub, replayer_for
from tests.live_server import wait_for
from tests.loadgen import record_result

TMPFS_BYTES = 2 * 1024 * 1024


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MB tmpfs of its own (unmounted at teardown); skips where mounting is not allowed."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a 2 MB tmpfs needs root (mount -t tmpfs); not root here")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_BYTES}", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip() or r.returncode}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def other_file(directory: Path) -> Path:
    """Another process's file on the same disk (made while there is room: tmpfs refuses even
    an empty new file once it is full)."""
    path = directory / "someone-elses-file"
    path.touch()
    return path


def fill_to_last_byte(filler: Path) -> Path:
    """The other file grows into every byte the spool left: the free-space floor cannot stop it."""
    fd = os.open(filler, os.O_WRONLY | os.O_APPEND)
    try:
        for size in (65536, 4096, 512, 1):
            while True:
                try:
                    os.write(fd, b"x" * size)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
                    break
    finally:
        os.close(fd)
    return filler


def spool_until_refused(spool: Spool, device: str, per_record: int = 20) -> int:
    """Append records until the disk refuses one; the number of readings acknowledged."""
    n = 0
    while True:
        try:
            spool.append([make_sub(device, n, per_record)])
        except SpoolFull:
            return n
        n += per_record


@pytest.fixture
def pool(database_url, db):
    p = make_pool(database_url, 1, 4)
    yield p
    p.close()


def _rows(db, device: str) -> list[int]:
    return [r[0] for r in db.execute("SELECT value::int FROM telemetry_readings WHERE device_id = %s ORDER BY 1",
                                     (device,))]


def test_replay_drains_a_spool_on_a_disk_full_to_the_last_byte(tiny_disk, pool, db):
    root = tiny_disk / "spool"
    spool = Spool(root, max_bytes=2**30, min_free_bytes=0, segment_bytes=512 * 1024).open()
    filler = other_file(tiny_disk)
    acked = spool_until_refused(spool, "full")
    segments = [p for _, p in list_segments(spool.dir)]
    assert acked > 5000 and len(segments) >= 3
    # One segment as an older version left it, without a pre-allocated checkpoint: on a full
    # disk its position cannot be recorded at all, and its replay must go on regardless.
    checkpoint_path(segments[1]).unlink()
    fill_to_last_byte(filler)
    assert free_bytes(tiny_disk) == 0
    rep, buffer = replayer_for(spool, pool, chunk_rows=500)
    try:
        assert rep.run_once()
        assert _rows(db, "full") == list(range(acked))  # every acknowledged reading, once
        assert list_segments(spool.dir) == []  # finishing the segments freed their space
        assert filler.exists() and free_bytes(tiny_disk) > 0  # nobody freed space by hand
    finally:
        buffer.close(5)
        spool.close()


def test_full_disk_refuses_new_spool_work_and_status_says_why(tiny_disk, db_proxy, db):
    pool = make_pool(db_proxy.url, 1, 2)
    spool = Spool(tiny_disk / "spool", max_bytes=2**30, min_free_bytes=0).open()
    buffer = BatchBuffer(PostgresSink(pool), spool=spool, batch_size=50, flush_interval=0.05, max_retries=1,
                         retry_base_delay=0.05, retry_max_delay=0.5, write_timeout=1.0, probe_timeout=1.0)
    buffer.start()
    try:
        filler = other_file(tiny_disk)
        spool_until_refused(spool, "refuse")
        fill_to_last_byte(filler)
        assert free_bytes(tiny_disk) == 0
        db_proxy.down()
        buffer.report_sink_failure("test: database cut")
        st = spool.status()
        assert st["free_bytes"] == 0
        assert st["accepting"] is False
        assert "disk full" in st["refusal_reason"]
        with pytest.raises(BufferFull) as refused:
            buffer.submit(make_sub("refuse", 10**6, 1))
        assert "disk full" in str(refused.value) and refused.value.retry_after >= 1
    finally:
        db_proxy.up()
        buffer.close(5)
        spool.close()
        pool.close()


def test_replayer_error_is_logged_once_and_retried_with_growing_delays(tmp_path, pool, db, caplog):
    spool = Spool(tmp_path / "spool", max_bytes=2**30, min_free_bytes=0).open()
    spool.append([make_sub("unreadable", 0, 3)])
    (segment,) = spool.take_own_segments()
    # The segment turns into something the replayer cannot read (a directory of that name):
    # every pass fails the same way.
    for p in segment.parent.glob(segment.name + "*"):
        p.unlink()
    segment.mkdir()
    rep, buffer = replayer_for(spool, pool, scan_interval=0.01)
    caplog.set_level(logging.INFO, logger="backend.ingest.replay")
    rep.start()
    try:
        wait_for(lambda: len(rep.error_delays) >= 6, timeout=30)
    finally:
        rep.stop(5)
        buffer.close(5)
        spool.close()
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 1, [r.getMessage() for r in tracebacks]
    delays = rep.error_delays[:6]
    caps = [min(rep.error_max_delay, 0.01 * 2 ** i) for i in range(6)]
    assert all(c / 2 <= d <= c for d, c in zip(delays, caps, strict=True)), (delays, caps)
    assert "IsADirectoryError" in (spool.status()["last_problem"] or "")


@pytest.mark.slow
def test_full_tmpfs_spool_drains_after_postgres_returns_without_freeing_space(tiny_disk, make_live_server,
                                                                             stoppable_pg):
    """The issue's scenario end to end: 2 gunicorn workers, SPOOL_DIR on a 2 MB tmpfs with no
    free-space floor, PostgreSQL stopped under load until the disk is full to the last byte
    (the spool and another file), then started again."""
    spool_dir = tiny_disk / "spool"
    server = make_live_server(env={"DATABASE_URL": stoppable_pg.url, "SPOOL_DIR": str(spool_dir),
                                   "SPOOL_MIN_FREE_BYTES": "0", "ACK_TIMEOUT": "3"}, workers=2)
    filler = other_file(tiny_disk)
    lg, rss = start_load(server, threads=4)
    wait_for(lambda: lg.stats.committed > 20, timeout=30)
    stoppable_pg.stop()
    # The spool takes what fits, then refuses; the other file takes every byte left over
    # (again whenever a refused append gives back the pages it had taken).
    wait_for(lambda: free_bytes(tiny_disk) < 64 * 1024 and lg.stats.spooled > 100, timeout=120)

    def full_to_the_last_byte() -> bool:
        fill_to_last_byte(filler)
        return free_bytes(tiny_disk) == 0

    wait_for(full_to_the_last_byte, timeout=30)
    s503_full = lg.stats.s503
    wait_for(lambda: lg.stats.s503 > s503_full + 20, timeout=60)  # refused while full, with Retry-After
    statuses = all_statuses(server, 2)
    spools = [st["spool"] for st in statuses.values()]
    assert spools and all(sp["free_bytes"] == 0 and sp["accepting"] is False for sp in spools), spools
    assert all("disk full" in sp["refusal_reason"] for sp in spools), [sp["refusal_reason"] for sp in spools]
    spooled_bytes = sum(p.stat().st_size for p in spool_dir.glob("w-*/seg-*.wal"))
    filler_bytes = filler.stat().st_size
    spooled_acks = lg.stats.spooled
    stoppable_pg.start()
    started = time.monotonic()
    # Live load goes on meanwhile; the spool drains on its own, the other file stays.
    wait_for(lambda: not list(spool_dir.glob("w-*/seg-*.wal")), timeout=120)
    drained_s = time.monotonic() - started
    lg.stop()
    rss.stop()
    verdict = lg.wait_until_stored(stoppable_pg.url, timeout=60)
    assert verdict.lost == 0, f"{verdict.line()} sample={verdict.lost_sample}\n{server.log_tail(60)}"
    assert verdict.duplicates == 0 and verdict.ts_mismatch == 0, verdict.line()
    assert filler.stat().st_size == filler_bytes, "nobody freed space by hand"
    assert_honest_503s(lg)
    log = server.log_path.read_text(errors="replace")
    assert "Traceback" not in log and "No space left on device" not in log.replace("disk full", ""), \
        server.log_tail(60)
    record_result("spool_disk_full_to_last_byte", figures(
        lg, verdict, rss, spooled_acks_before_restart=spooled_acks, spool_bytes_at_full=spooled_bytes,
        other_file_bytes=filler_bytes, restart_to_drained_s=round(drained_s, 1)))
