"""Apply `migrations/*.sql` once each, in order, tracked in a table.

Several gunicorn workers (or instances) may start at once, so the whole run holds a
PostgreSQL advisory lock: the first applies, the others wait and then find nothing to do.
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
        conn.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version text PRIMARY KEY, checksum text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            for path in pending(conn, directory):
                sql = path.read_text()
                with conn.transaction():
                    conn.execute(sql)
                    conn.execute(
                        "INSERT INTO schema_migrations (version, checksum) VALUES (%s, %s)",
                        (path.stem, checksum(sql)),
                    )
                log.info("applied migration %s", path.stem)
                applied.append(path.stem)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
    return applied
