"""The rollup merger's upkeep of the committed-readings log (backend/store/rollups.py): it folds,
and it deletes what is folded and expired, also when no stream process runs to do it."""

from __future__ import annotations

from backend.store import rollups
from backend.store.rollups import merge_all, prune
from tests.live_server import wait_for


def _old_readings(db, n: int) -> None:
    db.execute("INSERT INTO telemetry_readings (device_id, metric, ts, value)"
               " SELECT 'old', 'alt', now() - g * interval '1 s', g FROM generate_series(1, %s) g", (n,))
    db.execute("UPDATE stream_events SET created_at = now() - interval '1 hour'")


def test_prune_deletes_only_what_is_folded_and_expired(db) -> None:
    _old_readings(db, 3)
    assert prune(db, 60) == 0  # expired but not folded: it is the rollups' tail
    assert merge_all(db) == 3
    assert prune(db, 7200) == 0  # folded but not expired
    assert prune(db, 60) == 1
    assert db.execute("SELECT count(*) FROM stream_events").fetchone()[0] == 0
    assert db.execute("SELECT sum(count) FROM telemetry_rollup_1h").fetchone()[0] == 3


def test_the_workers_merger_prunes_without_a_stream_process(make_app, db, monkeypatch) -> None:
    monkeypatch.setattr(rollups, "PRUNE_EVERY_S", 0.0)  # every round instead of every 30 s
    _old_readings(db, 5)
    make_app(rollup_merge_interval_s=0.1, stream_retention_s=60)
    wait_for(lambda: db.execute("SELECT count(*) FROM stream_events").fetchone()[0] == 0, timeout=10)
    assert db.execute("SELECT sum(count) FROM telemetry_rollup_1d").fetchone()[0] == 5
