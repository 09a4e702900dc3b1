"""The whole service through Debian's PgBouncer in transaction mode (as Supabase's pooler on 6543).

A client connection owns a server connection only for one transaction there, so anything
session-scoped (server-side prepared statements, session advisory locks, SET) would break or
leak between clients. Migrations, ingest (single and batched), queries, keys, alerts and the
spool's replay after a pooler outage all run through it here.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from backend.store.migrations import MIGRATIONS_DIR, migrate
from tests import pgbouncer
from tests.live_server import ROOT, wait_for
from tests.loadgen import LoadGen

pytestmark = pytest.mark.skipif(not pgbouncer.available(),
                                reason="pgbouncer is not installed (apt-get install -y pgbouncer; .ci/run does it)")


@pytest.fixture
def bouncer(database_url):
    pool = pgbouncer.PgBouncer(database_url).start()
    yield pool
    pool.destroy()


@pytest.fixture
def fresh_database(pg_admin_url):
    name = f"telemetry_pgb_{secrets.token_hex(3)}"
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    info = psycopg.conninfo.conninfo_to_dict(pg_admin_url)
    info["dbname"] = name
    yield psycopg.conninfo.make_conninfo(**info)
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_concurrent_migrations_through_a_transaction_pooler(fresh_database, bouncer):
    url = bouncer.url_for(fresh_database)
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(migrate(url))
        except BaseException as exc:  # noqa: BLE001 - asserted below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    assert sorted(v for r in results for v in r) == sorted(p.stem for p in MIGRATIONS_DIR.glob("*.sql"))
    assert migrate(url) == []


def iso(dt: datetime) -> str:
    return dt.isoformat().replace("+00:00", "Z")


def test_ingest_query_keys_alerts_and_replay_through_pgbouncer(make_live_server, bouncer, database_url):
    # Small pools on both sides: 2 workers x 4 connections share 3 server connections.
    bouncer.stop()
    bouncer.pool_size = 3
    bouncer.start()
    server = make_live_server(env={"DATABASE_URL": bouncer.url_for(database_url), "DB_POOL_MAX": "4"}, workers=2)
    # single readings
    for i in range(12):  # more than psycopg's prepare threshold (5) on the same pooled connections
        r = server.post("/telemetry/parse", data=f"alt:{150 + i},bat_v:12.4",
                        headers={"X-Device-Id": "pgb-single", "Content-Type": "text/plain"})
        assert r.status_code == 200 and r.json()["accepted"] == 2, r.text
    # batches from concurrent gateways: each acknowledged reading stored once
    lg = LoadGen.for_server(server, threads=4, lines_per_post=50)
    lg.start()
    wait_for(lambda: lg.stats.ok >= 40, timeout=60)
    lg.stop()
    verdict = lg.wait_until_stored(database_url, 30)
    assert verdict.acked >= 2000 and verdict.lost == 0 and verdict.duplicates == 0, verdict.line()
    # queries
    r = server.get("/telemetry/query?device_id=pgb-single&metric=alt&limit=100")
    assert r.status_code == 200 and r.json()["count"] == 12, r.text
    r = server.get("/telemetry/aggregate?device_id=pgb-single&metric=alt&interval=1h")
    assert r.status_code in (200, 400), r.text  # 400 only if the parameter set differs; never 5xx
    # keys: issued, used, revoked through the pooler
    key = server.post("/api/keys", json={"name": "pgb-gw", "scopes": ["ingest", "read"]}).json()
    gw = {"X-API-Key": key["key"]}
    r = server.post("/telemetry/parse", data="alt:1", headers={**gw, "X-Device-Id": "pgb-key",
                                                               "Content-Type": "text/plain"})
    assert r.status_code == 200, r.text
    # alerts: a rule, a reading over it, the alert
    rule = server.post("/api/alert-rules", json={"rule_name": "hot", "metric": "temp", "rule_type": "above",
                                                 "threshold_value": 50, "device_id": "pgb-alert"})
    assert rule.status_code == 201, rule.text

    def open_alert() -> list:
        # Each worker reloads its rules every 2 s: readings go on until one meets the new rule.
        r = server.post("/api/ingest", json={"device_id": "pgb-alert", "temp": 75,
                                             "timestamp": iso(datetime.now(UTC) - timedelta(seconds=1))})
        assert r.status_code == 200, r.text
        data = server.get("/api/alerts?device_id=pgb-alert").json()["data"]
        return [a for a in data if a["metric"] == "temp" and not a["is_resolved"]]

    alert = wait_for(open_alert, timeout=60, interval=0.5)[0]
    assert alert["actual_value"] == 75
    # it really went through the pooler, in transaction mode, on at most its 3 server connections
    pools = [p for p in bouncer.show("POOLS") if p["database"] == psycopg.conninfo.conninfo_to_dict(
        database_url)["dbname"]]
    assert pools and pools[0]["pool_mode"] == "transaction"
    assert pools[0]["sv_active"] + pools[0]["sv_idle"] + pools[0]["sv_used"] <= 3
    stats = [s for s in bouncer.show("STATS") if s["database"] == pools[0]["database"]][0]
    assert stats["total_xact_count"] > 30, stats  # group commit: fewer transactions than requests
    # the pooler goes away: acknowledged readings go to the spool, and are replayed once it is back
    bouncer.stop()
    spooled = []
    for i in range(5):
        r = server.post("/telemetry/parse", data=f"device_id:pgb-outage,seq:{i}",
                        headers={"Content-Type": "text/plain"}, timeout=30)
        assert r.status_code == 200, r.text
        spooled.append(r.json().get("durability"))
    assert "spooled" in spooled, spooled
    bouncer.start()
    wait_for(lambda: server.query("SELECT count(*) FROM telemetry_readings WHERE device_id = 'pgb-outage'"
                                  " AND metric = 'seq'")[0][0] == 5, timeout=60)
    wait_for(lambda: not list((server.workdir / "spool").glob("w-*/seg-*.wal")), timeout=60)
    assert server.query("SELECT count(DISTINCT value) FROM telemetry_readings WHERE device_id = 'pgb-outage'"
                        " AND metric = 'seq'")[0][0] == 5
    assert "ERROR" not in server.log_tail(200), server.log_tail(60)


@pytest.mark.parametrize("mode", ["transaction", "session", "direct"])
def test_supabase_check_reports_the_pooler_mode_version_and_what_is_missing(fresh_database, mode):
    pool = None if mode == "direct" else pgbouncer.PgBouncer(fresh_database, pool_mode=mode).start()
    try:
        url = pool.url_for(fresh_database) if pool else fresh_database
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SUPABASE_", "DATABASE_", "REDIS_"))}
        out = subprocess.run([sys.executable, "-m", "backend", "supabase", "check"], cwd=ROOT, timeout=120,
                             env={**env, "DATABASE_URL": url, "ADMIN_API_KEY": "x"}, capture_output=True, text=True)
    finally:
        if pool:
            pool.destroy()
    assert out.returncode == 0, out.stderr + out.stdout
    lines = dict(line.split(":", 1) for line in out.stdout.splitlines() if ":" in line and not line.startswith(" "))
    assert lines["pooler"].split()[0] == mode, out.stdout
    assert lines["server"].strip().startswith("PostgreSQL 15"), out.stdout
    total = len(list(MIGRATIONS_DIR.glob("*.sql")))
    assert lines["migrations"].strip().startswith(f"{total} applied now"), out.stdout
    assert lines["missing"].strip() == "nothing", out.stdout
    assert "REDIS_URL is empty" in out.stdout  # advice, not a failure
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM schema_migrations").fetchone() == (total,)


def test_supabase_check_fails_and_says_what_is_missing(fresh_database):
    # a table created by someone else (another owner) that the service cannot secure
    migrate(fresh_database)
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS pg_temp_probe_x (id int)")  # owned by postgres: secured
        conn.execute("ALTER TABLE pg_temp_probe_x DISABLE ROW LEVEL SECURITY")
        conn.execute("ALTER TABLE telemetry_readings DISABLE ROW LEVEL SECURITY")
    from backend.config import Config
    from backend.store.supabase_check import check, render

    report = check(Config(database_url=fresh_database))
    # the check re-secures what it can (both are ours), so nothing is missing afterwards ...
    assert report.ok, render(report)
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        assert conn.execute("SELECT relrowsecurity FROM pg_class WHERE relname = 'telemetry_readings'"
                            ).fetchone() == (True,)
        # ... but a table owned by another role stays exposed, and the check says which
        conn.execute("CREATE ROLE telemetry_other_owner_probe NOLOGIN") if not conn.execute(
            "SELECT 1 FROM pg_roles WHERE rolname = 'telemetry_other_owner_probe'").fetchone() else None
        conn.execute("ALTER TABLE pg_temp_probe_x OWNER TO telemetry_other_owner_probe")
        conn.execute("ALTER TABLE pg_temp_probe_x DISABLE ROW LEVEL SECURITY")
    try:
        report = check(Config(database_url=fresh_database))
        assert not report.ok
        assert "pg_temp_probe_x" in render(report) and "without row-level security" in render(report)
    finally:
        with psycopg.connect(fresh_database, autocommit=True) as conn:
            conn.execute("DROP TABLE pg_temp_probe_x")
