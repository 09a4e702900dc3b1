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
        app.extensions["write_path"].close(5)
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


def _old_backlog_of_a_live_worker(root, age_s: float):
    """A segment `age_s` old in another live worker's directory: its lock is held, so this
    app's replayer leaves it alone, like a backlog whose replay is stuck."""
    import time as _time

    from backend.ingest.spool import Spool, list_segments
    from tests.ingest.test_spool import make_sub

    other = Spool(root, max_bytes=2**30, min_free_bytes=0).open()
    other.append([make_sub("stuck", 0, 3)])
    other.take_own_segments()
    ((seq, path),) = list_segments(other.dir)
    old = path.with_name(f"seg-{seq:08d}-{int((_time.time() - age_s) * 1000)}.wal")
    path.rename(old)
    path.with_name(path.name + ".done").rename(old.with_name(old.name + ".done"))
    return other


def test_health_degraded_when_the_oldest_unflushed_reading_is_too_old(make_app, app_config):
    from pathlib import Path

    app = make_app()
    other = _old_backlog_of_a_live_worker(Path(app_config.spool_dir).resolve(), age_s=479)
    try:
        client = app.test_client()
        r = client.get("/health")
        assert r.status_code == 200  # the database answers: HTTP follows database_connected
        assert r.json["status"] == "degraded" and r.json["database_connected"] is True
        assert r.json["oldest_unflushed_age_s"] >= 479 and r.json["max_unflushed_age_s"] == 60
        assert "not reaching the database" in r.json["reason"] and "HEALTH_MAX_UNFLUSHED_AGE=60" in r.json["reason"]
        lenient = make_app(health_max_unflushed_age=3600).test_client().get("/health")
        assert lenient.status_code == 200 and lenient.json["status"] == "healthy" and "reason" not in lenient.json
    finally:
        other.close()


def test_health_max_unflushed_age_is_read_from_the_environment():
    from backend.config import Config

    assert Config.from_env({}).health_max_unflushed_age == 60.0
    assert Config.from_env({"HEALTH_MAX_UNFLUSHED_AGE": "90"}).health_max_unflushed_age == 90.0
