"""Maintenance: the partitions months ahead are created again when missing."""

from __future__ import annotations


def test_maintenance_creates_missing_partitions(app, db):
    maint = app.extensions["telemetry"].maintenance
    parts = db.execute("SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                       " WHERE i.inhparent = 'telemetry_readings'::regclass AND c.relname ~ '_[0-9]{4}_[0-9]{2}$'"
                       " ORDER BY 1 DESC LIMIT 1").fetchone()[0]
    db.execute(f'ALTER TABLE telemetry_readings DETACH PARTITION "{parts}"')
    db.execute(f'DROP TABLE "{parts}"')
    assert maint.run_once() == 1
    assert maint.run_once() == 0
