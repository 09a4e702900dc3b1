"""/health tells the truth about the database, and ingest refuses what it cannot keep."""

from __future__ import annotations

import time

from backend import create_app


def test_health_503_with_reason_when_database_unreachable_and_recovers(stoppable_pg, app_config):
    from dataclasses import replace

    app = create_app(replace(app_config, database_url=stoppable_pg.url, spool_dir="", ack_timeout=1.0,
                             max_retries=1))
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = "Bearer test-admin-key"
    try:
        assert client.get("/health").status_code == 200
        stoppable_pg.stop()
        r = client.get("/health")
        assert r.status_code == 503
        assert r.json["status"] == "unhealthy" and r.json["database_connected"] is False
        assert r.json["reason"].startswith("database unreachable")
        stoppable_pg.start()
        deadline = time.monotonic() + 20
        while client.get("/health").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert client.get("/health").status_code == 200
    finally:
        stoppable_pg.start()
        svc = app.extensions["telemetry"]
        svc.buffer.close(5)
        svc.pool.close()


def test_maintenance_creates_missing_partitions(app, db):
    maint = app.extensions["telemetry"].extras["maintenance"]
    parts = db.execute("SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                       " WHERE i.inhparent = 'telemetry_readings'::regclass AND c.relname ~ '_[0-9]{4}_[0-9]{2}$'"
                       " ORDER BY 1 DESC LIMIT 1").fetchone()[0]
    db.execute(f'ALTER TABLE telemetry_readings DETACH PARTITION "{parts}"')
    db.execute(f'DROP TABLE "{parts}"')
    assert maint.run_once() == 1
    assert maint.run_once() == 0
