"""Real-database fixtures: PostgreSQL over a real connection, never a mock.

TEST_DATABASE_URL (CI sets it to this machine's PostgreSQL 15) names a server on which a
fresh database is created for the session; without it an embedded PostgreSQL is started
in a temporary directory. Redis fixtures skip, with the reason, when no Redis answers.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from backend.store.migrations import migrate
from tests.live_server import LiveServer

KEEP_TABLES = {"schema_migrations"}


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        yield url
        return
    from backend.store.embedded import start_embedded

    tmp = tempfile.mkdtemp(prefix="telemetry-test-pg-")
    url, handle = start_embedded(tmp, cleanup="delete")
    yield url
    del handle


@pytest.fixture(scope="session")
def database_url(pg_admin_url: str) -> Iterator[str]:
    """A fresh, migrated database for this test session, dropped at the end."""
    name = f"telemetry_test_{os.getpid()}_{secrets.token_hex(3)}"
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    info = psycopg.conninfo.conninfo_to_dict(pg_admin_url)
    info["dbname"] = name
    url = psycopg.conninfo.make_conninfo(**info)
    migrate(url)
    with psycopg.connect(url, autocommit=True) as conn:
        from backend.store.partitions import ensure_partitions

        ensure_partitions(conn, 3)
        seeded = [r[0] for r in conn.execute("SELECT name FROM telemetry_fields")]
    os.environ["_TEST_SEEDED_FIELDS"] = ",".join(seeded)
    yield url
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def reset_database(url: str) -> None:
    """Empty every data table, keep the schema and the seeded field catalogue."""
    with psycopg.connect(url, autocommit=True) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition"
        )]
        data = [t for t in tables if t not in KEEP_TABLES | {"telemetry_fields"}]
        if data:
            conn.execute("TRUNCATE " + ", ".join(f'"{t}"' for t in data) + " RESTART IDENTITY CASCADE")
        seeded = [s for s in os.environ.get("_TEST_SEEDED_FIELDS", "").split(",") if s]
        conn.execute("DELETE FROM telemetry_fields WHERE NOT (name = ANY(%s))", (seeded,))


@pytest.fixture
def db(database_url: str) -> Iterator[psycopg.Connection]:
    """An autocommit connection to a freshly emptied test database."""
    reset_database(database_url)
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn


@pytest.fixture
def app_config(database_url: str, tmp_path: Path):
    from backend.config import Config

    return Config(database_url=database_url, testing=True, flush_interval=0.1, retry_base_delay=0.01,
                  retry_max_delay=0.2, ack_timeout=5.0, spool_dir=str(tmp_path / "spool"),
                  admin_api_key="test-admin-key", log_level="WARNING")


@pytest.fixture
def app(db, app_config):
    from backend import create_app

    application = create_app(app_config)
    yield application
    application.extensions["telemetry"].close(5)


@pytest.fixture
def client(app):
    c = app.test_client()
    c.environ_base["HTTP_AUTHORIZATION"] = "Bearer test-admin-key"
    return c


@pytest.fixture
def make_app(db, app_config):
    """Factory: make_app(**config_overrides) -> app on the emptied test database; closed at teardown."""
    from backend import create_app

    apps = []

    def factory(**overrides):
        apps.append(create_app(app_config.replace(**overrides)))
        return apps[-1]

    yield factory
    for application in apps:
        application.extensions["telemetry"].close(5)


@pytest.fixture
def make_live_server(database_url: str, tmp_path: Path):
    """Factory: make_live_server(env={...}, workers=2) -> started LiveServer; all stopped at teardown."""
    servers: list[LiveServer] = []
    reset_database(database_url)

    def factory(env: dict[str, str] | None = None, workers: int = 2, threads: int = 8,
                start: bool = True) -> LiveServer:
        server = LiveServer(database_url, tmp_path / f"server{len(servers)}", env, workers, threads)
        servers.append(server)
        return server.start() if start else server

    yield factory
    for server in servers:
        server.stop(timeout=15)


@pytest.fixture
def live_server(make_live_server) -> LiveServer:
    return make_live_server()


@pytest.fixture
def stoppable_pg(tmp_path: Path):
    """A private, migrated PostgreSQL that the test may stop and start (`.stop()`, `.start()`, `.url`)."""
    from tests.pg_control import StoppablePostgres

    server = StoppablePostgres(Path(tempfile.mkdtemp(prefix="telemetry-pg-"))).init().start()
    migrate(server.url)
    with psycopg.connect(server.url, autocommit=True) as conn:
        from backend.store.partitions import ensure_partitions

        ensure_partitions(conn, 3)
    yield server
    server.destroy()


@pytest.fixture
def db_proxy(database_url: str):
    """A TCP proxy to the test database: `.url` for the service, `.down()` / `.blackhole()` / `.up()`."""
    from tests.db_proxy import TcpProxy

    proxy = TcpProxy.for_url(database_url).start()
    yield proxy
    proxy.close()
