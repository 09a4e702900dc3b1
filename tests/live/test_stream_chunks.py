"""A statement of many readings is streamed in rows of at most 10,000 (migrations/0043)."""

from __future__ import annotations


def test_a_big_insert_is_split_into_rows_in_order(db) -> None:
    db.execute("DELETE FROM stream_events")
    # One statement of 25,000 readings: one row would be 25,000 readings long; a few million
    # such readings made a jsonb array over PostgreSQL's 256 MB limit and failed the INSERT.
    db.execute("INSERT INTO telemetry_readings (device_id, metric, ts, value)"
               " SELECT 'bulk', 'alt', now() - g * interval '1 ms', g FROM generate_series(1, 25000) g")
    rows = db.execute("SELECT id, n, readings FROM stream_events ORDER BY id").fetchall()
    assert [n for _, n, _ in rows] == [10000, 10000, 5000]
    values = [r[3] for _, _, readings in rows for r in readings]
    assert values == list(range(1, 25001))  # every reading once, in insertion order
