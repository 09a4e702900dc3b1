"""Monthly partitions of telemetry_readings, created ahead of time."""

from __future__ import annotations

from datetime import UTC, date, datetime

import psycopg


def month_start(day: date, delta_months: int = 0) -> date:
    index = day.year * 12 + (day.month - 1) + delta_months
    return date(index // 12, index % 12 + 1, 1)


def ensure_partitions(conn: psycopg.Connection, months_ahead: int, today: date | None = None) -> int:
    """Partitions from last month to `months_ahead` months ahead; returns how many were new."""
    today = today or datetime.now(UTC).date()
    row = conn.execute(
        "SELECT telemetry_ensure_partitions(%s, %s)", (month_start(today, -1), months_ahead + 2)
    ).fetchone()
    return _secured(conn, int(row[0]) if row else 0)


def ensure_month(conn: psycopg.Connection, day: date) -> int:
    """The partition for one month (moving its rows out of the default partition)."""
    row = conn.execute("SELECT telemetry_ensure_partitions(%s, 1)", (month_start(day),)).fetchone()
    return _secured(conn, int(row[0]) if row else 0)


def _secured(conn: psycopg.Connection, created: int) -> int:
    # A new partition is a table Supabase's REST API could serve by name: RLS on it too.
    if created:
        from backend.store.migrations import secure_tables

        secure_tables(conn)
    return created
