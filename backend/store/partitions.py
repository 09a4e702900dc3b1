"""Monthly partitions, created ahead of time: telemetry_readings and its rollups, the raw
payloads and the quarantine.

The rollups (migrations/0020) get the same months as the raw table, so a late reading
finds its rollup partitions wherever it finds its raw one. The raw payloads and quarantine
(migration 0025) are monthly so that retention (backend/store/retention.py) drops months.
"""

from __future__ import annotations

from datetime import UTC, date, datetime

import psycopg

# Raw partitions first (the same order in every caller). The count returned is the raw
# table's months (what callers always meant); the rollups' follow them.
_ENSURE = "SELECT telemetry_ensure_partitions(%s, %s), telemetry_rollup_ensure_partitions(%s, %s)"
# Partitioned by received_at through partition_ensure_monthly() (migration 0025).
MONTHLY_TABLES = ("telemetry_raw", "telemetry_quarantine")


def month_start(day: date, delta_months: int = 0) -> date:
    index = day.year * 12 + (day.month - 1) + delta_months
    return date(index // 12, index % 12 + 1, 1)


def ensure_partitions(conn: psycopg.Connection, months_ahead: int, today: date | None = None) -> int:
    """Partitions from last month to `months_ahead` months ahead; returns how many raw ones were new."""
    today = today or datetime.now(UTC).date()
    row = conn.execute(_ENSURE, (month_start(today, -1), months_ahead + 2) * 2).fetchone()
    created = int(row[0]) if row else 0
    others = int(row[1]) if row else 0  # the rollups'
    for table in MONTHLY_TABLES:
        row = conn.execute("SELECT partition_ensure_monthly(%s::regclass, %s, %s)",
                           (table, month_start(today, -1), months_ahead + 2)).fetchone()
        others += int(row[0]) if row else 0
    _secure_new(conn, created + others)
    # The dashboard role's views over the rollups, once those tables exist (migration 0026).
    conn.execute("SELECT dashboard_ensure_views()")
    return created


def ensure_month(conn: psycopg.Connection, day: date) -> int:
    """The partition for one month (moving its rows out of the default partition)."""
    row = conn.execute(_ENSURE, (month_start(day), 1) * 2).fetchone()
    created = int(row[0]) if row else 0
    _secure_new(conn, created + (int(row[1]) if row else 0))
    return created


def _secure_new(conn: psycopg.Connection, created: int) -> None:
    # A new partition is a table Supabase's REST API could serve by name: RLS on it too.
    if created:
        from backend.store.migrations import secure_tables

        secure_tables(conn)
