"""Apply `migrations/*.sql` once each, in order, tracked in a table.

Several gunicorn workers (or instances) may start at once, so the whole run is one
transaction holding a transaction-level advisory lock: the first applies, the others wait
and then find nothing to do. Transaction-level because a session-level lock would be taken on
one server connection and released on another behind a transaction-mode pooler (PgBouncer,
Supabase's Supavisor on 6543); one transaction because a failed migration then leaves nothing
half-applied. The role needs no superuser rights: it owns what it creates (tests/store/
test_migrations_owner.py migrates as such a role).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import psycopg

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"
LOCK_KEY = 0x7E1E_0001  # arbitrary, constant across releases


class MigrationChanged(RuntimeError):
    """An applied migration's file no longer matches what was applied."""


def checksum(sql: str) -> str:
    return hashlib.sha256(sql.encode()).hexdigest()


def pending(conn: psycopg.Connection, directory: Path = MIGRATIONS_DIR) -> list[Path]:
    """Migrations not applied yet; raises MigrationChanged when an applied file was edited.

    An edited file would never run again, so the database would silently differ from what
    the repository says it is: a changed schema goes in a new migration, never in an old one.
    """
    applied = dict(conn.execute("SELECT version, checksum FROM schema_migrations").fetchall())
    files = sorted(directory.glob("*.sql"))
    changed = [p.name for p in files if p.stem in applied and applied[p.stem] != checksum(p.read_text())]
    if changed:
        raise MigrationChanged(
            f"applied migration(s) {', '.join(changed)} changed since they were applied; restore the"
            " original file(s) and put the change in a new migration")
    return [p for p in files if p.stem not in applied]


def migrate(database_url: str, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply every pending migration; returns the versions applied by this call."""
    applied: list[str] = []
    with psycopg.connect(database_url, autocommit=True, prepare_threshold=None) as conn:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version text PRIMARY KEY, checksum text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            for path in pending(conn, directory):
                sql = path.read_text()
                conn.execute(sql)
                conn.execute(
                    "INSERT INTO schema_migrations (version, checksum) VALUES (%s, %s)",
                    (path.stem, checksum(sql)),
                )
                log.info("applied migration %s", path.stem)
                applied.append(path.stem)
            secure_tables(conn)
    return applied


def secure_tables(conn: psycopg.Connection) -> int:
    """Row-level security on every table of ours (migration 0050); how many were new."""
    row = conn.execute("SELECT to_regprocedure('telemetry_secure_tables()') IS NOT NULL").fetchone()
    if not (row and row[0]):
        return 0  # a migrations directory without 0050 (tests of the runner itself)
    row = conn.execute("SELECT telemetry_secure_tables()").fetchone()
    return int(row[0]) if row else 0
