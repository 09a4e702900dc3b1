"""Migrations as Supabase runs them: a non-superuser role that owns its database, and Supabase's
`anon` / `authenticated` roles that its REST API uses, which must read nothing of ours."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import errors, sql

from backend.store.migrations import MIGRATIONS_DIR, migrate
from backend.store.partitions import ensure_month, ensure_partitions
from tests.live_server import LiveServer

API_ROLES = ("anon", "authenticated")


def url_for(admin_url: str, **changes: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(admin_url)
    info.update(changes)
    return psycopg.conninfo.make_conninfo(**info)


def ensure_api_roles(admin: psycopg.Connection) -> None:
    """Supabase's roles (cluster-wide, so shared with other sessions: created once, never dropped)."""
    for role in API_ROLES:
        try:
            admin.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(role)))
        except (errors.DuplicateObject, errors.UniqueViolation):
            pass  # another session made it first


@pytest.fixture
def owned_database(pg_admin_url: str) -> Iterator[tuple[str, str]]:
    """(owner's URL, superuser URL) of a fresh database owned by a plain login role."""
    role = f"telemetry_owner_{secrets.token_hex(3)}"
    name = f"telemetry_owned_{secrets.token_hex(3)}"
    with psycopg.connect(pg_admin_url, autocommit=True) as admin:
        ensure_api_roles(admin)
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION")
                      .format(sql.Identifier(role)))
        admin.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), sql.Identifier(role)))
    owner_url = url_for(pg_admin_url, dbname=name, user=role)
    # Supabase's defaults: the API roles may use the schema and get every new table.
    with psycopg.connect(owner_url, autocommit=True) as conn:
        conn.execute("GRANT USAGE ON SCHEMA public TO anon, authenticated")
        conn.execute("ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON TABLES TO anon, authenticated")
        conn.execute("ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON SEQUENCES TO anon, authenticated")
        conn.execute("ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON FUNCTIONS TO anon, authenticated")
    yield owner_url, url_for(pg_admin_url, dbname=name)
    with psycopg.connect(pg_admin_url, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def our_tables(conn: psycopg.Connection) -> list[str]:
    return [r[0] for r in conn.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') ORDER BY 1")]


def test_migrations_apply_as_a_non_superuser_owner_and_anon_reads_nothing(owned_database, tmp_path):
    owner_url, super_url = owned_database
    with psycopg.connect(owner_url, autocommit=True) as conn:
        assert conn.execute("SELECT rolsuper OR rolcreatedb FROM pg_roles WHERE rolname = current_user"
                            ).fetchone() == (False,)
    assert migrate(owner_url) == sorted(p.stem for p in MIGRATIONS_DIR.glob("*.sql"))
    with psycopg.connect(owner_url, autocommit=True) as conn:
        assert ensure_partitions(conn, 2) >= 3
        assert ensure_month(conn, __import__("datetime").date(2031, 5, 1)) == 1  # a partition made later
    # The service itself runs as that owner: data and a key hash go in through the API.
    server = LiveServer(owner_url, tmp_path / "server", workers=1).start()
    try:
        r = server.post("/telemetry/parse", data="alt:150,bat_v:12.4",
                        headers={"X-Device-Id": "rls-dev", "Content-Type": "text/plain"})
        assert r.status_code == 200 and r.json()["accepted"] == 2, r.text
        r = server.post("/api/keys", json={"name": "reader", "scopes": ["read"]})
        assert r.status_code in (200, 201), r.text
        assert server.get("/telemetry/query?device_id=rls-dev").json()["count"] == 2
    finally:
        server.stop()
    with psycopg.connect(super_url, autocommit=True) as conn:
        tables = our_tables(conn)
        assert {"telemetry_readings", "telemetry_readings_2031_05", "api_keys", "devices"} <= set(tables)
        unsecured = [r[0] for r in conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relrowsecurity")]
        assert unsecured == []
        assert conn.execute("SELECT count(*) FROM telemetry_readings WHERE device_id = 'rls-dev'"
                            ).fetchone() == (2,)
        assert conn.execute("SELECT count(*) FROM api_keys").fetchone()[0] >= 1
        # No policy at all: nothing grants anon or authenticated a row.
        assert conn.execute("SELECT count(*) FROM pg_policies WHERE schemaname = 'public'").fetchone() == (0,)
        for role in API_ROLES:
            conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
            for table in tables:
                try:
                    rows = conn.execute(sql.SQL("SELECT * FROM {} LIMIT 1").format(sql.Identifier(table))
                                        ).fetchall()
                except errors.InsufficientPrivilege:
                    continue  # as good: PostgREST answers 401/403
                assert rows == [], f"{role} reads {table}"
            with pytest.raises(errors.InsufficientPrivilege):
                conn.execute("SELECT telemetry_write('[]'::jsonb, false)")
            with pytest.raises(errors.InsufficientPrivilege):
                conn.execute("INSERT INTO api_keys (name) VALUES ('x')")
            conn.execute("RESET ROLE")


def test_a_failing_migration_leaves_nothing_half_applied(database_url, tmp_path):
    import shutil

    for path in MIGRATIONS_DIR.glob("*.sql"):
        shutil.copy(path, tmp_path / path.name)
    (tmp_path / "9998_fine.sql").write_text("CREATE TABLE migration_probe_fine (id int);")
    (tmp_path / "9999_broken.sql").write_text("CREATE TABLE migration_probe_broken (id int); SELECT 1/0;")
    with pytest.raises(psycopg.errors.DivisionByZero):
        migrate(database_url, tmp_path)
    with psycopg.connect(database_url, autocommit=True) as conn:
        assert conn.execute("SELECT to_regclass('migration_probe_fine'), to_regclass('migration_probe_broken')"
                            ).fetchone() == (None, None)
        assert conn.execute("SELECT count(*) FROM schema_migrations WHERE version LIKE '999%'").fetchone() == (0,)
