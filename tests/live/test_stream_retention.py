"""The stream's cleanup deletes expired rows of stream_events, but never one the rollups have
not folded yet (migrations/0052: the rollups read the same log)."""

from __future__ import annotations

import asyncio

from backend.live.feed import EventFeed
from backend.live.hub import Hub
from backend.store.rollups import merge_all


def _expired_rows(db, n: int) -> list[int]:
    db.execute("INSERT INTO telemetry_readings (device_id, metric, ts, value)"
               " SELECT 'old', 'alt', now() - g * interval '1 s', g FROM generate_series(1, %s) g", (n,))
    db.execute("UPDATE stream_events SET created_at = now() - interval '1 hour'")
    return [r[0] for r in db.execute("SELECT id FROM stream_events ORDER BY id")]


def _delete_expired(database_url: str) -> int:
    async def go() -> int:
        feed = EventFeed(database_url, Hub(10), retention_s=60)
        await feed.pool.open(wait=True)
        try:
            return await feed.delete_expired()
        finally:
            await feed.pool.close()

    return asyncio.run(go())


def test_expired_rows_go_only_once_folded(db, database_url) -> None:
    ids = _expired_rows(db, 3)
    assert len(ids) == 1 and db.execute("SELECT count(*) FROM telemetry_unrolled").fetchone()[0] == 3
    assert _delete_expired(database_url) == 0  # expired, not folded: kept, and reads still count it
    assert db.execute("SELECT count(*) FROM stream_events").fetchone()[0] == 1
    assert merge_all(db) == 3
    assert _delete_expired(database_url) == 1
    assert db.execute("SELECT count(*) FROM stream_events").fetchone()[0] == 0
    assert db.execute("SELECT sum(count) FROM telemetry_rollup_1d").fetchone()[0] == 3
