"""Retention drops whole partitions, exactly those entirely older than the policy, on any
range-partitioned table (the raw readings, raw payloads, quarantine, and a scratch table
laid out like a rollup: RANGE on `bucket`). Real PostgreSQL throughout."""

from __future__ import annotations

import shutil
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from backend.config import Config, ConfigError
from backend.store import retention
from backend.store.migrations import MIGRATIONS_DIR, migrate
from backend.store.retention import RetentionPolicy

ROOT = Path(__file__).resolve().parents[2]
MONTHS_2024 = [date(2024, m, 1) for m in range(1, 7)]


def child_names(db: psycopg.Connection, parent: str) -> set[str]:
    return {r[0] for r in db.execute("SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                                     " WHERE i.inhparent = %s::regclass", (parent,))}


def policy(**days: int) -> RetentionPolicy:
    return RetentionPolicy({tier: days.get(tier, 0) for tier in retention.TIERS})


@pytest.fixture
def old_readings(db):
    """Monthly partitions Jan..Jun 2024 with readings every 6 h, a few rows in DEFAULT (2003)."""
    # Other tests of the session may have left monthly partitions of years long past (a
    # 2003 reading makes its month): the old ones here are this fixture's alone.
    for (name,) in db.execute("SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                              " WHERE i.inhparent = 'telemetry_readings'::regclass"
                              " AND c.relname ~ '^telemetry_readings_[0-9]{4}_[0-9]{2}$'"
                              " AND c.relname < 'telemetry_readings_2024_07'").fetchall():
        db.execute(f'DROP TABLE "{name}"')
    db.execute("SELECT telemetry_ensure_partitions('2024-01-01', 6)")
    db.execute("INSERT INTO telemetry_readings (device_id, metric, ts, value)"
               " SELECT 'r1', 'alt', t, extract(epoch FROM t)"
               " FROM generate_series('2024-01-01'::timestamptz, '2024-06-30 18:00+00', interval '6 hours') t")
    db.execute("INSERT INTO telemetry_readings (device_id, metric, ts, value) VALUES"
               " ('r1', 'alt', '2003-05-01T00:00Z', 1), ('r1', 'alt', '2003-05-02T00:00Z', 2)")
    yield db
    for m in MONTHS_2024:
        db.execute(f"DROP TABLE IF EXISTS telemetry_readings_{m:%Y_%m}")


def test_raw_tier_drops_exactly_the_partitions_wholly_before_the_cutoff(old_readings):
    db = old_readings
    now = datetime(2024, 6, 15, 12, tzinfo=UTC)
    cutoff = now - timedelta(days=30)  # 2024-05-16 12:00: May straddles it, so May stays
    before_all = child_names(db, "telemetry_readings")
    newer = db.execute("SELECT count(*), sum(value) FROM telemetry_readings WHERE ts >= %s", (cutoff,)).fetchone()
    in_may = db.execute("SELECT count(*) FROM telemetry_readings WHERE ts >= '2024-05-01' AND ts < '2024-06-01'"
                        ).fetchone()[0]

    plans = retention.apply(db, policy(raw=30), now=now)

    assert plans is not None and len(plans) == 1
    dropped = {p.name for p in plans[0].drop}
    assert dropped == {f"telemetry_readings_2024_{m:02d}" for m in (1, 2, 3, 4)}
    assert child_names(db, "telemetry_readings") == before_all - dropped
    # No row newer than the policy lost (count and content), the straddling month whole.
    assert db.execute("SELECT count(*), sum(value) FROM telemetry_readings WHERE ts >= %s",
                      (cutoff,)).fetchone() == newer
    assert db.execute("SELECT count(*) FROM telemetry_readings WHERE ts >= '2024-05-01' AND ts < '2024-06-01'"
                      ).fetchone()[0] == in_may == 31 * 4
    assert db.execute("SELECT count(*) FROM telemetry_readings WHERE ts < '2024-05-01' AND ts >= '2024-01-01'"
                      ).fetchone()[0] == 0
    # DEFAULT is never dropped, whatever its rows' age (no row DELETE either).
    assert "telemetry_readings_default" in child_names(db, "telemetry_readings")
    assert db.execute("SELECT count(*) FROM telemetry_readings WHERE ts < '2004-01-01'").fetchone()[0] == 2
    # Applying again: nothing more to drop.
    again = retention.apply(db, policy(raw=30), now=now)
    assert again is not None and again[0].drop == []


def test_cutoff_exactly_on_a_bound_drops_that_month_and_nothing_later(old_readings):
    db = old_readings
    now = datetime(2024, 4, 1, tzinfo=UTC) + timedelta(days=10)
    plans = retention.plan(db, policy(raw=10), now=now)  # cutoff 2024-04-01T00:00Z exactly
    assert {p.name for p in plans[0].drop} == {"telemetry_readings_2024_01", "telemetry_readings_2024_02",
                                              "telemetry_readings_2024_03"}


def test_dry_run_changes_nothing_and_lists_what_would_go(old_readings, database_url):
    db = old_readings
    before = child_names(db, "telemetry_readings")
    rows = db.execute("SELECT count(*) FROM telemetry_readings").fetchone()[0]
    # Real time: the 2024 months are older than 400 days, the current months are not.
    env = {"DATABASE_URL": database_url, "RETENTION_RAW_DAYS": "400", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "backend", "retention", "--dry-run"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert child_names(db, "telemetry_readings") == before
    assert db.execute("SELECT count(*) FROM telemetry_readings").fetchone()[0] == rows
    for m in MONTHS_2024:
        assert f"would drop public.telemetry_readings_{m:%Y_%m}" in out.stdout, out.stdout
    listed = [ln for ln in out.stdout.splitlines() if "would drop public." in ln]
    assert len(listed) == 6, out.stdout
    assert "1m (RETENTION_1M_DAYS" not in out.stdout  # tiers without a policy are not looked at

    # Without --dry-run the same command drops exactly those.
    out = subprocess.run([sys.executable, "-m", "backend", "retention"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert before - child_names(db, "telemetry_readings") == {f"telemetry_readings_{m:%Y_%m}" for m in MONTHS_2024}
    assert "dropped public.telemetry_readings_2024_06" in out.stdout


def test_payload_and_quarantine_tiers_through_the_maintenance_job(make_app, db):
    # Two years back: monthly partitions of both tables with a row each, plus today's rows.
    start = date(datetime.now(UTC).year - 2, 1, 1)
    for table in ("telemetry_raw", "telemetry_quarantine"):
        db.execute("SELECT partition_ensure_monthly(%s::regclass, %s, 2)", (table, start))
    old = datetime(start.year, 1, 10, tzinfo=UTC)
    db.execute("INSERT INTO telemetry_raw (request_id, received_at, parser_version, data_source, payload)"
               " VALUES (gen_random_uuid(), %s, 'v', 's', 'old'), (gen_random_uuid(), now(), 'v', 's', 'new')",
               (old,))
    db.execute("INSERT INTO telemetry_quarantine (received_at, reason) VALUES (%s, 'old'), (now(), 'new')", (old,))
    app = make_app(retention_raw_days=0, retention_payload_days=365, retention_quarantine_days=365)
    maint = app.extensions["telemetry"].maintenance

    plans = maint.apply_retention()

    assert plans is not None
    by_tier = {tp.tier: {p.name for p in tp.drop} for tp in plans}
    assert by_tier == {"payload": {f"telemetry_raw_{start:%Y}_01", f"telemetry_raw_{start:%Y}_02"},
                       "quarantine": {f"telemetry_quarantine_{start:%Y}_01", f"telemetry_quarantine_{start:%Y}_02"}}
    assert [r[0] for r in db.execute("SELECT payload FROM telemetry_raw")] == ["new"]
    assert [r[0] for r in db.execute("SELECT reason FROM telemetry_quarantine")] == ["new"]


def test_one_session_at_a_time(old_readings, database_url):
    db = old_readings
    now = datetime(2024, 6, 15, tzinfo=UTC)
    with psycopg.connect(database_url) as other:  # another worker in the middle of the job
        other.execute("SELECT pg_advisory_xact_lock(%s)", (retention.LOCK_KEY,))
        assert retention.apply(db, policy(raw=30), now=now) is None
        assert "telemetry_readings_2024_01" in child_names(db, "telemetry_readings")
    assert retention.apply(db, policy(raw=30), now=now) is not None
    assert "telemetry_readings_2024_01" not in child_names(db, "telemetry_readings")


@pytest.mark.parametrize("key_type", ["timestamptz", "date"])
def test_any_range_partitioned_table_like_a_rollup(db, key_type):
    # Laid out as the rollups will be (RANGE on `bucket`), daily partitions, plus MAXVALUE.
    db.execute("DROP TABLE IF EXISTS scratch_rollup")
    db.execute(f"CREATE TABLE scratch_rollup (device_id text, metric text, bucket {key_type} NOT NULL,"
               " n bigint) PARTITION BY RANGE (bucket)")
    days = [date(2025, 3, d) for d in range(1, 11)]
    for d in days:
        db.execute(f"CREATE TABLE scratch_rollup_{d:%Y%m%d} PARTITION OF scratch_rollup"
                   f" FOR VALUES FROM ('{d}') TO ('{d + timedelta(days=1)}')")
    db.execute("CREATE TABLE scratch_rollup_rest PARTITION OF scratch_rollup FOR VALUES FROM ('2025-03-11')"
               " TO (MAXVALUE)")
    db.execute("INSERT INTO scratch_rollup SELECT 'd', 'm', t, 1 FROM generate_series('2025-03-01'::timestamp,"
               " '2025-03-12', interval '1 hour') t")
    tiers = {"scratch": ("RETENTION_SCRATCH_DAYS", "scratch_rollup")}
    try:
        now = datetime(2025, 3, 8, 6, tzinfo=UTC)  # 3 days: cutoff 2025-03-05T06:00Z
        keep = db.execute("SELECT count(*) FROM scratch_rollup WHERE bucket >= '2025-03-05'").fetchone()[0]
        plans = retention.apply(db, RetentionPolicy({"scratch": 3}), now=now, tiers=tiers)
        assert plans is not None
        assert {p.name for p in plans[0].drop} == {f"scratch_rollup_{d:%Y%m%d}" for d in days[:4]}
        assert plans[0].kept == 7  # six days from the 5th and the MAXVALUE partition
        assert db.execute("SELECT min(bucket)::date, count(*) FROM scratch_rollup").fetchone() == (
            date(2025, 3, 5), keep)
    finally:
        db.execute("DROP TABLE scratch_rollup")


def test_a_table_that_is_not_range_partitioned_is_refused(db):
    with pytest.raises(retention.RetentionError, match="devices is not a partitioned table"):
        retention.partitions(db, "devices")


def test_tiers_whose_table_does_not_exist_yet_are_skipped(db):
    tiers = {"ghost": ("RETENTION_GHOST_DAYS", "telemetry_rollup_ghost")}
    plans = retention.plan(db, RetentionPolicy({"ghost": 5}), tiers=tiers)
    assert plans[0].skipped and not plans[0].drop
    assert "skipped" in retention.describe(plans, dry_run=True)


def test_policy_settings_are_validated():
    assert not RetentionPolicy.from_config(Config()).enabled  # off by default
    with pytest.raises(ConfigError, match="RETENTION_RAW_DAYS"):
        Config.from_env(env={"RETENTION_RAW_DAYS": "-1"})
    with pytest.raises(ConfigError, match="RETENTION_PAYLOAD_DAYS"):
        Config.from_env(env={"RETENTION_PAYLOAD_DAYS": "thirty"})
    with pytest.raises(ConfigError, match="RETENTION_HOURLY_DAYS=10 is below RETENTION_RAW_DAYS=30"):
        Config.from_env(env={"RETENTION_RAW_DAYS": "30", "RETENTION_HOURLY_DAYS": "10"})
    with pytest.raises(ConfigError, match="RETENTION_1M_DAYS=7 is below RETENTION_RAW_DAYS=forever"):
        Config.from_env(env={"RETENTION_1M_DAYS": "7"})
    seed003 = Config.from_env(env={"RETENTION_RAW_DAYS": "30", "RETENTION_HOURLY_DAYS": "90",
                                   "RETENTION_DAILY_DAYS": "365"})
    assert RetentionPolicy.from_config(seed003).days == {"raw": 30, "1m": 0, "hourly": 90, "daily": 365,
                                                         "payload": 0, "quarantine": 0}


def test_partitioning_migration_keeps_payloads_and_quarantine(pg_admin_url, tmp_path):
    # A database at 0024, with rows in the old (unpartitioned) tables, then 0025 onwards.
    before, after = tmp_path / "before", tmp_path / "after"
    before.mkdir()
    after.mkdir()
    for f in sorted(MIGRATIONS_DIR.glob("*.sql")):
        if f.name < "0025":
            shutil.copy(f, before)
        shutil.copy(f, after)
    name = f"retention_mig_{datetime.now(UTC):%H%M%S%f}"
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    info = psycopg.conninfo.conninfo_to_dict(pg_admin_url)
    url = psycopg.conninfo.make_conninfo(**{**info, "dbname": name})
    try:
        migrate(url, before)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("INSERT INTO telemetry_raw (request_id, received_at, parser_version, data_source, payload)"
                         " VALUES ('00000000-0000-0000-0000-000000000001', '2023-02-03T04:05Z', 'v1', 'x', 'p1'),"
                         " ('00000000-0000-0000-0000-000000000002', now(), 'v1', 'x', 'p2')")
            conn.execute("INSERT INTO telemetry_quarantine (received_at, reason, raw)"
                         " VALUES ('2023-02-03T04:05Z', 'r1', 'x'), (now(), 'r2', 'y')")
        migrate(url, after)
        with psycopg.connect(url, autocommit=True) as conn:
            assert conn.execute("SELECT payload FROM telemetry_raw ORDER BY received_at").fetchall() == [("p1",), ("p2",)]
            assert conn.execute("SELECT tableoid::regclass::text FROM telemetry_raw WHERE payload = 'p1'"
                                ).fetchone()[0] == "telemetry_raw_2023_02"
            assert conn.execute("SELECT id, reason FROM telemetry_quarantine ORDER BY id").fetchall() == [
                (1, "r1"), (2, "r2")]
            # The id sequence carries on.
            conn.execute("INSERT INTO telemetry_quarantine (reason) VALUES ('r3')")
            assert conn.execute("SELECT max(id) FROM telemetry_quarantine").fetchone()[0] == 3
            assert conn.execute("SELECT relkind FROM pg_class WHERE relname = 'telemetry_raw'").fetchone()[0] == "p"
    finally:
        with psycopg.connect(pg_admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_two_workers_at_once_drop_each_partition_once(old_readings, database_url):
    import threading

    now = datetime(2024, 6, 15, 12, tzinfo=UTC)
    barrier = threading.Barrier(2)
    results: list[object] = []
    errors_seen: list[BaseException] = []

    def worker() -> None:
        try:
            with psycopg.connect(database_url, autocommit=True) as conn:
                barrier.wait(10)
                results.append(retention.apply(conn, policy(raw=30), now=now))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors_seen.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors_seen, errors_seen
    dropped = [p.name for plans in results if plans for tp in plans for p in tp.drop]
    assert sorted(dropped) == [f"telemetry_readings_2024_{m:02d}" for m in (1, 2, 3, 4)]  # each once
    assert "telemetry_readings_2024_05" in child_names(old_readings, "telemetry_readings")


@pytest.mark.slow
def test_the_housekeeping_job_of_a_two_worker_server_applies_it_once(make_live_server, database_url):
    from tests.live_server import wait_for

    start = date(datetime.now(UTC).year - 3, 1, 1)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("SELECT partition_ensure_monthly('telemetry_raw'::regclass, %s, 2)", (start,))
        conn.execute("INSERT INTO telemetry_raw (request_id, received_at, parser_version, data_source, payload)"
                     " VALUES (gen_random_uuid(), %s, 'v', 's', 'old')", (datetime(start.year, 1, 3, tzinfo=UTC),))
    old = {f"telemetry_raw_{start:%Y}_01", f"telemetry_raw_{start:%Y}_02"}
    # The job's first pass comes a minute after a worker starts, then hourly.
    server = make_live_server(env={"RETENTION_PAYLOAD_DAYS": "365", "LOG_LEVEL": "INFO"}, workers=2)
    with psycopg.connect(database_url, autocommit=True) as conn:
        wait_for(lambda: not (old & child_names(conn, "telemetry_raw")), timeout=240, interval=1)
        assert conn.execute("SELECT count(*) FROM telemetry_raw WHERE payload = 'old'").fetchone()[0] == 0
    log = server.log_path.read_text()
    for name in old:  # by one worker; the other found nothing left or the lock taken
        assert log.count(f"retention: dropped public.{name} ") == 1, log[-3000:]
    assert "Traceback" not in log and "WARNING backend.store.maintenance" not in log, log[-3000:]
    assert len(server.worker_pids()) == 2
