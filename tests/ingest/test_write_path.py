"""WritePath: one construction of the durable write path, one close()."""

from __future__ import annotations

import threading

from backend.config import Config
from backend.ingest.faults import Faults
from backend.ingest.observers import WriteObservers
from backend.ingest.write_path import WritePath
from backend.store.pool import make_pool
from tests.ingest.test_buffer import count, put, sub
from tests.live_server import wait_for


def _cfg(tmp_path, **kw) -> Config:
    return Config().replace(data_dir=str(tmp_path), spool_dir=str(tmp_path / "spool"), spool_min_free_bytes=0,
                   batch_size=50, flush_interval=0.05, flush_linger=0.0, **kw)


def test_close_stops_every_thread_and_releases_the_spool(database_url, db, tmp_path):
    pool = make_pool(database_url, 1, 2)
    before = set(threading.enumerate())
    try:
        wp = WritePath.build(_cfg(tmp_path), pool, WriteObservers()).start()
        started = {t.name for t in set(threading.enumerate()) - before}
        assert {"batch-flusher", "sink-probe", "spool-replayer"} <= started
        assert put(wp.buffer, sub("wp")) == "committed"
        worker_dir = wp.spool.dir
        assert worker_dir is not None and worker_dir.exists()
        assert wp.close(5)
        assert wp.close(5)  # twice is harmless: shutdown hooks and tests may both call it
        # The spool sealed and released its (empty) directory; nothing of the write path runs on.
        assert not worker_dir.exists()
        wait_for(lambda: not {t for t in set(threading.enumerate()) - before
                              if t.name in ("batch-flusher", "sink-probe", "spool-replayer")}, 10)
        assert count(db, "wp") == (5, 5)
    finally:
        pool.close()


def test_committed_writes_reach_the_observers_given_to_build(database_url, db, tmp_path):
    pool = make_pool(database_url, 1, 2)
    seen = []
    observers = WriteObservers()
    observers.register(lambda batch, result: seen.extend(s.request_id for s in batch))
    wp = WritePath.build(_cfg(tmp_path), pool, observers).start()
    try:
        s = sub("obs-wp")
        assert put(wp.buffer, s) == "committed"
        assert seen == [s.request_id]
    finally:
        wp.close(5)
        pool.close()


def test_fault_points_belong_to_one_write_path_not_the_process(database_url, tmp_path):
    # Fault points used to be module globals armed by whichever app was built last; now each
    # write path carries its own, and production (TESTING off) never arms any.
    pool = make_pool(database_url, 1, 2)
    armed = WritePath.build(_cfg(tmp_path / "a", testing=True, fault_point="after_commit"), pool, WriteObservers())
    plain = WritePath.build(_cfg(tmp_path / "b"), pool, WriteObservers())
    refused = WritePath.build(_cfg(tmp_path / "c", testing=False, fault_point="after_commit"), pool,
                              WriteObservers())
    try:
        assert armed.replayer is not None and armed.replayer.sink.after_commit is not None
        for wp in (plain, refused):
            assert wp.replayer is not None and wp.replayer.sink.after_commit is None
            assert wp.buffer.faults.hook("after_spool_append") is None
        assert Faults().hook("after_live_commit") is None
    finally:
        for wp in (armed, plain, refused):
            wp.close(5)
        pool.close()


def test_no_spool_configured_builds_without_replayer(database_url, tmp_path):
    pool = make_pool(database_url, 1, 2)
    wp = WritePath.build(_cfg(tmp_path).replace(spool_dir="off"), pool, WriteObservers())
    try:
        assert wp.spool is None and wp.replayer is None and wp.buffer.spool is None
    finally:
        wp.close(5)
        pool.close()
