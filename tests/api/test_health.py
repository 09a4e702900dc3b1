"""/health: public and safe to probe, truthful about the database, details behind a key."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from backend import create_app
from tests.live_server import wait_for

ADMIN = {"Authorization": "Bearer test-admin-key"}


def test_health_503_with_reason_when_database_unreachable_and_recovers(stoppable_pg, app_config):
    app = create_app(app_config.replace(database_url=stoppable_pg.url, spool_dir="", ack_timeout=1.0,
                                        max_retries=1))
    client = app.test_client()
    try:
        assert client.get("/health").status_code == 200
        stoppable_pg.stop()
        r = wait_for(lambda: (r := client.get("/health")).status_code == 503 and r, timeout=20)
        assert r.json["status"] == "unhealthy" and r.json["database_connected"] is False
        assert r.json["database"] == {"kind": "postgresql", "via": "direct", "connected": False}
        assert r.json["reason"] == "database unreachable"  # the cause is for operators (details)
        details = client.get("/health?details=1", headers=ADMIN)
        assert details.status_code == 503 and details.json["reason"].startswith("database unreachable: ")
        stoppable_pg.start()
        wait_for(lambda: client.get("/health").status_code == 200, timeout=20)
    finally:
        stoppable_pg.start()
        app.extensions["telemetry"].close(5)


def _leaks(text: str, app, database_url: str) -> list[str]:
    """Pieces of internals found in an answer: the database's host, port, user, paths, the pid."""
    import psycopg

    info = psycopg.conninfo.conninfo_to_dict(database_url)
    svc = app.extensions["telemetry"]
    suspects = {"host": str(info.get("host")), "port": str(info.get("port")), "user": f'"{info.get("user")}"',
                "connection text": "connection", "spool dir": str(Path(svc.config.spool_dir).resolve()),
                "pid": str(os.getpid()), "pid key": "pid", "path": "/tmp"}
    return [what for what, piece in suspects.items() if piece in text]


def test_anonymous_health_shows_no_error_text_path_or_pid(make_app, db_proxy):
    app = make_app(database_url=db_proxy.url)
    client = app.test_client()
    assert client.get("/health").status_code == 200
    db_proxy.down()
    r = wait_for(lambda: (r := client.get("/health")).status_code == 503 and r, timeout=20)
    text = r.get_data(as_text=True)
    assert _leaks(text, app, db_proxy.url) == [], text
    assert set(r.json) >= {"status", "timestamp", "supabase_connected", "batch_status", "database", "spool"}
    assert set(r.json["batch_status"]) == {"pending_records", "batch_size", "batch_full", "supabase_healthy"}
    assert r.json["spool"]["enabled"] is True and "accepting" in r.json["spool"]
    # The operator, with a key, sees the cause and where the spool lives.
    details = client.get("/health?details=1", headers=ADMIN).get_data(as_text=True)
    assert "database unreachable: " in details
    assert str(Path(app.extensions["telemetry"].config.spool_dir).resolve()) in details


def test_500_anonymous_health_calls_with_the_database_down_leave_the_circuit_closed(make_app, db_proxy):
    app = make_app(database_url=db_proxy.url)
    buffer, pool = app.extensions["telemetry"].buffer, app.extensions["telemetry"].pool
    client = app.test_client()
    assert client.get("/health").status_code == 200
    # The buffer's own start-up check (its probe thread) must be over, or it sees the outage.
    wait_for(lambda: (s := pool.get_stats()).get("requests_num", 0) >= 2 and s["pool_available"] == s["pool_size"])
    db_proxy.down()
    codes = [client.get("/health").status_code for _ in range(500)]
    wait_for(lambda: client.get("/health").status_code == 503, timeout=20)  # a ping has seen it down
    assert set(codes) <= {200, 503}
    assert buffer.circuit_status()["state"] == "closed" and buffer.sink_available()


def test_health_details_need_a_key_with_read_scope(make_app):
    client = make_app().test_client()
    assert client.get("/health").status_code == 200  # public
    anonymous = client.get("/health?details=1")
    assert anonymous.status_code == 401 and "read" in anonymous.json["error"]
    ingest = client.post("/api/keys", json={"name": "gw", "scopes": ["ingest"]}, headers=ADMIN).json["key"]
    reader = client.post("/api/keys", json={"name": "ops", "scopes": ["read"]}, headers=ADMIN).json["key"]
    assert client.get("/health?details=1", headers={"Authorization": f"Bearer {ingest}"}).status_code == 403
    r = client.get("/health?details=1", headers={"Authorization": f"Bearer {reader}"})
    assert r.status_code == 200 and r.json["batch_status"]["circuit"]["state"] == "closed"
    assert r.json["spool"]["dir"] and r.json["worker_pid"] == os.getpid()
    assert r.json["database"]["kind"] == "postgresql" and r.json["database"]["connected"] is True


def test_supabase_connected_only_for_a_supabase_database(make_app):
    r = make_app().test_client().get("/health")
    assert r.json["database_connected"] is True and r.json["database"] == {"kind": "postgresql", "via": "direct",
                                                                  "connected": True}
    assert r.json["supabase_connected"] is False and r.json["batch_status"]["supabase_healthy"] is False


@pytest.mark.parametrize("url,kind", [
    ("postgresql://postgres:pw@db.abcdefghijkl.supabase.co:5432/postgres", "supabase"),
    ("postgresql://postgres.abc:pw@aws-0-eu-central-1.pooler.supabase.com:6543/postgres", "supabase"),
    ("postgresql://u:pw@127.0.0.1:5432/telemetry", "postgresql"),
    ("host=supabase.co.evil.example port=5432 dbname=x user=u", "postgresql"),
])
def test_database_kind_from_its_host(url, kind):
    from backend.store.database import Database

    db = Database.from_url(url)
    assert db.kind == kind and "pw" not in db.display and "pw" not in repr(db)


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


def test_database_kind_is_embedded_when_serve_hands_the_embedded_url_to_the_workers(tmp_path):
    # `python -m backend serve` starts the embedded server and passes its socket URL on as
    # DATABASE_URL; the workers must still say "embedded", never "postgresql".
    from backend.config import Config
    from backend.store.database import Database

    url = f"postgresql://postgres:@/postgres?host={tmp_path / 'pg'}"
    assert Database.resolve(Config(database_url=url, data_dir=str(tmp_path))).kind == "embedded"
    assert Database.resolve(Config(database_url=url, data_dir=str(tmp_path / "other"))).kind == "postgresql"
