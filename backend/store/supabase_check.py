"""`python -m backend supabase check`: is this database ready for the service, and how is it reached?

Connects with DATABASE_URL, reports the server version and how connections reach it (direct,
or a pooler in transaction or session mode), applies the migrations, creates the partitions,
and lists what is still missing. Works on any PostgreSQL; the Supabase-specific part is the
`anon` / `authenticated` roles of its REST API, which must read none of our tables.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import psycopg

from backend.config import Config
from backend.store.database import Database
from backend.store.migrations import MIGRATIONS_DIR, migrate
from backend.store.partitions import ensure_partitions

PoolerMode = Literal["transaction", "session", "direct"]
PROBES = 4


@dataclass
class CheckReport:
    database: Database
    server_version: str = ""
    user: str = ""
    superuser: bool = False
    pooler: PoolerMode | None = None
    pooler_evidence: str = ""
    applied: list[str] = field(default_factory=list)
    migrations_total: int = 0
    partitions_created: int = 0
    tables: int = 0
    tables_with_rls: int = 0
    max_connections: int = 0
    connections_in_use: int = 0
    # Problems make the command fail; hints are advice.
    problems: list[str] = field(default_factory=list)
    hints: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _pid(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT pg_backend_pid()").fetchone()
    return int(row[0]) if row else -1


def probe_pooler(url: str, database: Database) -> tuple[PoolerMode, str]:
    """Transaction or session pooling, from behaviour; direct vs session pooler from the URL.

    Two client connections: while B holds a transaction open, A runs one statement. Behind a
    transaction-mode pooler a client owns a server only for a transaction, so B can get the
    server A had just used, or A a different one. With a session (or no) pooler each client
    keeps its own server process for life: A's pid never changes and never equals B's.
    """
    kwargs = {"autocommit": True, "prepare_threshold": None, "connect_timeout": 10}
    with psycopg.connect(url, **kwargs) as a, psycopg.connect(url, **kwargs) as b:
        first = _pid(a)
        for i in range(PROBES):
            with b.transaction():
                held = _pid(b)
                now = _pid(a)
            if held == first or now != first:
                return "transaction", (f"probe {i + 1}: two client connections shared a server process"
                                       f" (pids {first}, {held}, {now})")
        row = a.execute("SELECT inet_server_port()").fetchone()
    server_port = row[0] if row else None
    client_port = int(database.display.split("/")[0].rsplit(":", 1)[-1])
    if database.via == "session pooler" or (server_port is not None and server_port != client_port):
        return "session", (f"each client keeps its server process; connected to port {client_port},"
                           f" PostgreSQL listens on {server_port}")
    return "direct", f"each client keeps its own server process (PostgreSQL on port {server_port})"


def check(cfg: Config) -> CheckReport:
    """Run every check; raises psycopg.OperationalError when the database cannot be reached."""
    database = Database.from_url(cfg.database_url)
    report = CheckReport(database)
    url = cfg.database_url
    with psycopg.connect(url, autocommit=True, prepare_threshold=None, connect_timeout=10) as conn:
        row = conn.execute("SELECT current_setting('server_version'), current_user,"
                           " (SELECT rolsuper FROM pg_roles WHERE rolname = current_user),"
                           " current_setting('max_connections')::int,"
                           " (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')"
                           ).fetchone()
        assert row is not None
        report.server_version, report.user, report.superuser = str(row[0]), str(row[1]), bool(row[2])
        report.max_connections, report.connections_in_use = int(row[3]), int(row[4])
    report.pooler, report.pooler_evidence = probe_pooler(url, database)
    report.migrations_total = len(list(MIGRATIONS_DIR.glob("*.sql")))
    try:
        report.applied = migrate(url)
    except psycopg.Error as exc:
        report.problems.append(f"migrations failed (nothing was applied: they run in one transaction): {exc}")
        return report
    with psycopg.connect(url, autocommit=True, prepare_threshold=None, connect_timeout=10) as conn:
        report.partitions_created = ensure_partitions(conn, cfg.partitions_ahead_months)
        _check_schema(conn, report)
    _advise(cfg, report)
    return report


def _check_schema(conn: psycopg.Connection, report: CheckReport) -> None:
    rows = conn.execute(
        "SELECT c.relname, c.relrowsecurity FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p')").fetchall()
    report.tables = len(rows)
    report.tables_with_rls = sum(1 for _, rls in rows if rls)
    unsecured = sorted(name for name, rls in rows if not rls)
    if unsecured:
        report.problems.append("tables without row-level security (owned by another role, so the migration"
                               f" could not secure them): {', '.join(unsecured)}")
    api_roles = [r[0] for r in conn.execute(
        "SELECT rolname FROM pg_roles WHERE rolname IN ('anon', 'authenticated') ORDER BY 1")]
    for role in api_roles:
        readable = [r[0] for r in conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p', 'v', 'm')"
            " AND has_table_privilege(%s, c.oid, 'SELECT')"
            " AND (NOT c.relrowsecurity OR EXISTS (SELECT 1 FROM pg_policy p WHERE p.polrelid = c.oid))",
            (role,))]
        if readable:
            report.problems.append(f"Supabase's REST API role {role} can read: {', '.join(sorted(readable))}")
    if report.database.kind == "supabase" and not api_roles:
        report.hints.append("the host is Supabase's but its anon/authenticated roles are missing")


def _advise(cfg: Config, report: CheckReport) -> None:
    if report.pooler == "direct":
        report.hints.append(
            f"direct connections: every worker of every instance holds up to DB_POOL_MAX={cfg.db_pool_max}"
            f" of max_connections={report.max_connections} ({report.connections_in_use} in use now);"
            " for several instances use the transaction pooler (Supabase: port 6543)")
    if not cfg.redis_url:
        report.hints.append("REDIS_URL is empty: rate limits are counted per worker; set it so every worker"
                            " and instance shares them")
    if cfg.auth_required and not cfg.admin_api_key:
        report.hints.append("ADMIN_API_KEY is empty: set one, then issue gateway keys with"
                            " `python -m backend keys create --name <gateway> --scopes ingest`")


def render(report: CheckReport) -> str:
    db = report.database
    lines = [
        f"database:   {db.kind} at {db.display} as {report.user}"
        f"{' (superuser)' if report.superuser else ''}",
        f"server:     PostgreSQL {report.server_version}",
    ]
    if report.pooler:
        lines.append(f"pooler:     {report.pooler} ({report.pooler_evidence})")
    lines += [
        f"migrations: {len(report.applied)} applied now"
        f"{' (' + ', '.join(report.applied) + ')' if report.applied else ''},"
        f" {report.migrations_total} in the repository",
        f"partitions: {report.partitions_created} created",
        f"security:   row-level security on {report.tables_with_rls} of {report.tables} tables",
        "missing:    " + ("nothing" if report.ok else ""),
    ]
    lines += [f"  - {p}" for p in report.problems]
    lines += [f"hint: {h}" for h in report.hints]
    return "\n".join(lines)
