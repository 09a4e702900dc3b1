"""Retention: old data goes by dropping whole partitions, never by deleting rows.

Works on any table partitioned by RANGE on one time column: the partitions and their
bounds are read from the catalogue (`pg_inherits`, `pg_get_expr(relpartbound)`), so the
rollup tables (`telemetry_rollup_1m/1h/1d`, range-partitioned on `bucket`) are covered as
soon as they exist, without code here knowing their layout.

The rule: a partition goes only when its upper bound is at or before the cutoff (now minus
the tier's days), so every row in it is older than the policy; a partition that straddles
the cutoff stays whole (rows up to a month past the policy are kept, none newer is lost).
DEFAULT partitions and partitions bounded by MAXVALUE are never dropped.

Several workers run the housekeeping job; `apply()` takes a transaction-scoped advisory
try-lock, so one of them drops and the others skip. Each DROP waits at most
`lock_timeout` for its lock, so a long query on the table delays retention, not ingest.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import psycopg
from psycopg import sql

log = logging.getLogger(__name__)

LOCK_KEY = 0x7E1E_0025
# Tier -> (setting, table). The rollup tables belong to the rollups (branch analyse); a tier
# whose table does not exist (yet) is reported and skipped.
TIERS: dict[str, tuple[str, str]] = {
    "raw": ("RETENTION_RAW_DAYS", "telemetry_readings"),
    "1m": ("RETENTION_1M_DAYS", "telemetry_rollup_1m"),
    "hourly": ("RETENTION_HOURLY_DAYS", "telemetry_rollup_1h"),
    "daily": ("RETENTION_DAILY_DAYS", "telemetry_rollup_1d"),
    "payload": ("RETENTION_PAYLOAD_DAYS", "telemetry_raw"),
    "quarantine": ("RETENTION_QUARANTINE_DAYS", "telemetry_quarantine"),
}

# Every partition of `parent` with its bound: kind (range / default / other) and, for a
# one-column range, its upper bound as a timestamptz (NULL for MAXVALUE).
_PARTITIONS = """
SELECT c.relname, n.nspname, pg_get_expr(c.relpartbound, c.oid) AS bound,
       c.reltuples::bigint
FROM pg_inherits i
JOIN pg_class c ON c.oid = i.inhrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE i.inhparent = %s::regclass
ORDER BY c.relname
"""
_RANGE_KEY = """
SELECT pt.partstrat, pt.partnatts, format_type(a.atttypid, a.atttypmod)
FROM pg_partitioned_table pt
LEFT JOIN pg_attribute a ON a.attrelid = pt.partrelid AND a.attnum = pt.partattrs[0]
WHERE pt.partrelid = %s::regclass
"""
TIME_TYPES = ("timestamp with time zone", "timestamp without time zone", "date")


class RetentionError(ValueError):
    """A table retention cannot work on (not range-partitioned on one time column)."""


@dataclass(frozen=True)
class Partition:
    table: str  # the parent
    name: str
    schema: str
    upper: datetime | None  # None: MAXVALUE or DEFAULT
    rows_estimate: int

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"


@dataclass
class TierPlan:
    tier: str
    setting: str
    table: str
    days: int
    cutoff: datetime | None = None
    drop: list[Partition] = field(default_factory=list)
    kept: int = 0
    skipped: str = ""  # why nothing is looked at (table missing)


@dataclass(frozen=True)
class RetentionPolicy:
    """Days to keep per tier; 0 (or absent) means keep forever."""

    days: dict[str, int]

    @classmethod
    def from_config(cls, cfg: object) -> RetentionPolicy:
        return cls({tier: int(getattr(cfg, setting.lower())) for tier, (setting, _) in TIERS.items()})

    @property
    def enabled(self) -> bool:
        return any(d > 0 for d in self.days.values())


def partitions(conn: psycopg.Connection, table: str) -> list[Partition]:
    """The partitions of a RANGE-partitioned `table` with their upper bounds (from the catalogue)."""
    key = conn.execute(_RANGE_KEY, (table,)).fetchone()
    if key is None:
        raise RetentionError(f"{table} is not a partitioned table")
    strategy, natts, key_type = key
    if strategy != "r" or natts != 1 or key_type not in TIME_TYPES:
        raise RetentionError(f"{table} is not partitioned by RANGE on one time column")
    out = []
    for name, schema, bound, rows in conn.execute(_PARTITIONS, (table,)).fetchall():
        upper = None
        if bound.startswith("FOR VALUES FROM") and "MAXVALUE" not in bound.split(" TO ", 1)[1]:
            # Let PostgreSQL read its own literal ('2026-01-01 00:00:00+00'), in UTC.
            literal = bound.split(" TO (", 1)[1].rsplit(")", 1)[0]
            # (the literal is the catalogue's own output). timestamp and date bounds are UTC.
            expr = "SELECT {}::timestamptz" if key_type == TIME_TYPES[0] else "SELECT {}::timestamp AT TIME ZONE 'UTC'"
            upper = conn.execute(sql.SQL(expr).format(sql.SQL(literal))).fetchone()[0].astimezone(UTC)
        out.append(Partition(table, name, schema, upper, max(int(rows), 0)))
    return out


def _exists(conn: psycopg.Connection, table: str) -> bool:
    return conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()[0]


def plan(conn: psycopg.Connection, policy: RetentionPolicy, now: datetime | None = None,
         tiers: dict[str, tuple[str, str]] | None = None) -> list[TierPlan]:
    """What `apply` would drop: per tier that has a policy, the partitions wholly before its cutoff."""
    now = now or conn.execute("SELECT now()").fetchone()[0]
    out = []
    for tier, (setting, table) in (tiers or TIERS).items():
        days = policy.days.get(tier, 0)
        if days <= 0:
            continue
        tp = TierPlan(tier, setting, table, days, cutoff=now - timedelta(days=days))
        if not _exists(conn, table):
            tp.skipped = f"{table} does not exist"
            out.append(tp)
            continue
        for part in partitions(conn, table):
            if part.upper is not None and part.upper <= tp.cutoff:
                tp.drop.append(part)
            else:
                tp.kept += 1
        out.append(tp)
    return out


def apply(conn: psycopg.Connection, policy: RetentionPolicy, now: datetime | None = None,
          lock_timeout_ms: int = 2000, tiers: dict[str, tuple[str, str]] | None = None) -> list[TierPlan] | None:
    """Drop what `plan` lists, in one transaction; None when another session holds the job."""
    with conn.transaction():
        if not conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (LOCK_KEY,)).fetchone()[0]:
            return None
        conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(f"{int(lock_timeout_ms)}ms")))
        plans = plan(conn, policy, now, tiers)
        for tp in plans:
            for part in tp.drop:
                conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(part.schema, part.name)))
                log.info("retention: dropped %s (%s, %d days; upper bound %s)", part.qualified, tp.tier,
                         tp.days, part.upper)
    return plans


def describe(plans: list[TierPlan], dry_run: bool) -> str:
    """The operator's listing: one line per partition, then a line per tier."""
    verb = "would drop" if dry_run else "dropped"
    if not plans:
        return "retention is off: no RETENTION_*_DAYS setting is above 0"
    lines = []
    for tp in plans:
        if tp.skipped:
            lines.append(f"{tp.tier} ({tp.setting}={tp.days}): skipped, {tp.skipped}")
            continue
        cutoff = tp.cutoff.isoformat() if tp.cutoff else "-"
        lines.append(f"{tp.tier} ({tp.setting}={tp.days}, {tp.table}, cutoff {cutoff}):"
                     f" {verb} {len(tp.drop)}, keeping {tp.kept}")
        for part in tp.drop:
            lines.append(f"  {verb} {part.qualified} (rows before {part.upper.isoformat() if part.upper else '-'},"
                         f" ~{part.rows_estimate} rows)")
    return "\n".join(lines)
