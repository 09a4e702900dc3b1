"""Migrations: applied once each, in order, safe when several processes start at once."""

from __future__ import annotations

import threading

import psycopg

from backend.store.migrations import MIGRATIONS_DIR, migrate


def test_every_migration_recorded_once(db):
    versions = [r[0] for r in db.execute("SELECT version FROM schema_migrations ORDER BY version")]
    assert versions == sorted(p.stem for p in MIGRATIONS_DIR.glob("*.sql"))


def test_concurrent_migrate_on_a_fresh_database(pg_admin_url):
    name = "telemetry_migrate_race"
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    info = psycopg.conninfo.conninfo_to_dict(pg_admin_url)
    info["dbname"] = name
    url = psycopg.conninfo.make_conninfo(**info)
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(migrate(url))
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert errors == []
        applied = [v for r in results for v in r]
        assert sorted(applied) == sorted(p.stem for p in MIGRATIONS_DIR.glob("*.sql"))  # each once, in total
        assert migrate(url) == []
    finally:
        with psycopg.connect(pg_admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_partitions_created_ahead(db):
    from backend.store.partitions import ensure_partitions

    ensure_partitions(db, 3)
    parts = [r[0] for r in db.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'telemetry_readings'::regclass ORDER BY 1")]
    assert "telemetry_readings_default" in parts
    assert len([p for p in parts if p != "telemetry_readings_default"]) >= 5
    assert ensure_partitions(db, 3) == 0


def test_changed_applied_migration_stops_start_up(database_url, tmp_path):
    import shutil

    import pytest

    from backend.store.migrations import MigrationChanged

    for path in MIGRATIONS_DIR.glob("*.sql"):
        shutil.copy(path, tmp_path / path.name)
    first = sorted(tmp_path.glob("*.sql"))[0]
    assert migrate(database_url, tmp_path) == []  # same files: nothing to do
    first.write_text(first.read_text() + "\n-- edited after it was applied\n")
    with pytest.raises(MigrationChanged, match=first.name):
        migrate(database_url, tmp_path)
