"""Monthly partitions, created ahead of time: telemetry_readings, and (migration 0025) the raw
payloads and quarantine, which retention (backend/store/retention.py) drops month by month."""

from __future__ import annotations

from datetime import UTC, date, datetime

import psycopg

# Partitioned by received_at through partition_ensure_monthly() (migration 0025).
MONTHLY_TABLES = ("telemetry_raw", "telemetry_quarantine")


def month_start(day: date, delta_months: int = 0) -> date:
    index = day.year * 12 + (day.month - 1) + delta_months
    return date(index // 12, index % 12 + 1, 1)


def ensure_partitions(conn: psycopg.Connection, months_ahead: int, today: date | None = None) -> int:
    """Partitions from last month to `months_ahead` months ahead; returns how many were new."""
    today = today or datetime.now(UTC).date()
    row = conn.execute(
        "SELECT telemetry_ensure_partitions(%s, %s)", (month_start(today, -1), months_ahead + 2)
    ).fetchone()
    created = int(row[0]) if row else 0
    for table in MONTHLY_TABLES:
        row = conn.execute("SELECT partition_ensure_monthly(%s::regclass, %s, %s)",
                           (table, month_start(today, -1), months_ahead + 2)).fetchone()
        created += int(row[0]) if row else 0
    # The dashboard role's views over the rollups, once those tables exist (migration 0026).
    conn.execute("SELECT dashboard_ensure_views()")
    return created


def ensure_month(conn: psycopg.Connection, day: date) -> int:
    """The partition for one month (moving its rows out of the default partition)."""
    row = conn.execute("SELECT telemetry_ensure_partitions(%s, 1)", (month_start(day),)).fetchone()
    return int(row[0]) if row else 0
