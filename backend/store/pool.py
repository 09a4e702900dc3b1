"""Connection pool creation (psycopg 3 + psycopg_pool)."""

from __future__ import annotations

from psycopg_pool import ConnectionPool


def make_pool(database_url: str, min_size: int = 1, max_size: int = 4, name: str = "telemetry") -> ConnectionPool:
    # prepare_threshold=None: no server-side prepared statements, so the pool also works
    # through PgBouncer / Supabase's transaction-mode pooler.
    return ConnectionPool(
        database_url,
        min_size=min_size,
        max_size=max_size,
        kwargs={"prepare_threshold": None, "connect_timeout": 5, "autocommit": True},
        name=name,
        open=True,
        # No check on checkout (it cost a round trip per flush): a connection broken by a
        # database restart fails its first statement, the pool discards it, the retry reconnects.
        # A flush waiting for a connection should fail over quickly rather than hold requests.
        timeout=3.0,
    )
