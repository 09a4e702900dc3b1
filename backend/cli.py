"""Command line: `python -m backend <command>`.

serve      start the embedded PostgreSQL if needed, migrate, then run gunicorn
migrate    apply pending migrations (also done by serve)
partitions create the monthly partitions ahead of time
retention  drop partitions past the RETENTION_*_DAYS policy (--dry-run: only list them)
supabase check   connect, report pooler mode and version, migrate, list what is missing
dashboard-role --password-stdin   set the read-only dashboard role's password (docs/grafana.md)
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from backend.config import Config, ConfigError

log = logging.getLogger("backend.cli")
ROOT = Path(__file__).resolve().parent.parent


def resolve_database_url(cfg: Config, cleanup: str | None = "stop") -> tuple[str, Any]:
    """DATABASE_URL, or the embedded server's URL (kept alive while the handle lives)."""
    if cfg.database_url:
        return cfg.database_url, None
    from backend.store.embedded import start_embedded

    return start_embedded(cfg.data_dir, cleanup=cleanup)


def prepare_database(cfg: Config | None = None) -> None:
    import psycopg

    from backend.store.migrations import migrate
    from backend.store.partitions import ensure_partitions

    cfg = cfg or Config.from_env()
    # cleanup=None: this may run inside gunicorn's master, where the handle does not outlive us.
    url, _handle = resolve_database_url(cfg, cleanup=None)
    applied = migrate(url)
    with psycopg.connect(url, autocommit=True, prepare_threshold=None) as conn:
        created = ensure_partitions(conn, cfg.partitions_ahead_months)
    log.info("migrations applied: %s; partitions created: %d", applied or "none", created)


def bootstrap_admin_key(data_dir: Path) -> str:
    """First run without ADMIN_API_KEY: make one, keep it in DATA_DIR/admin_api_key (0600).

    Every endpoint but /health needs a key, so a fresh `make run` would otherwise refuse
    the operator's first curl. Set ADMIN_API_KEY (or issue keys) to replace it.
    """
    import secrets

    path = data_dir.resolve() / "admin_api_key"
    if path.exists():
        key = path.read_text().strip()
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        key = "tk_admin_" + secrets.token_urlsafe(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(key + "\n")
    log.info("no ADMIN_API_KEY set: using the admin key in %s", path)
    return key


def cmd_serve(args: argparse.Namespace) -> int:
    from dotenv import dotenv_values

    cfg = Config.from_env()
    url, handle = resolve_database_url(cfg)
    # gunicorn.conf.py reads HOST, PORT, GUNICORN_* from its environment: hand it .env's
    # values too (the environment wins, as in Config.from_env).
    dotenv = {k: v for k, v in dotenv_values(Path.cwd() / ".env").items() if v is not None}
    env = {**dotenv, **os.environ, "DATABASE_URL": url}
    if cfg.auth_required and not cfg.admin_api_key:
        env["ADMIN_API_KEY"] = bootstrap_admin_key(Path(cfg.data_dir))
    cmd = [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py"), *args.gunicorn_args]
    log.info("starting gunicorn on %s:%s (database: %s)", cfg.host, cfg.port,
             "embedded" if handle is not None else "DATABASE_URL")
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT)

    def forward(signum: int, _frame: Any) -> None:
        # gunicorn's graceful stop: workers finish requests and flush their buffers.
        proc.send_signal(signal.SIGTERM if signum == signal.SIGINT else signum)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, forward)
    code = proc.wait()
    if handle is not None:
        # Stop explicitly: pgserver's own reference counting keeps stale pids after a crash.
        handle.stop()
    return code


def cmd_migrate(args: argparse.Namespace) -> int:
    from backend.store.migrations import migrate

    url, _handle = resolve_database_url(Config.from_env())
    applied = migrate(url)
    print("applied:", ", ".join(applied) if applied else "nothing (up to date)")
    return 0


def cmd_partitions(args: argparse.Namespace) -> int:
    import psycopg

    from backend.store.partitions import ensure_partitions

    cfg = Config.from_env()
    url, _handle = resolve_database_url(cfg)
    with psycopg.connect(url, autocommit=True, prepare_threshold=None) as conn:
        print("partitions created:", ensure_partitions(conn, args.months or cfg.partitions_ahead_months))
    return 0


def cmd_retention(args: argparse.Namespace) -> int:
    import psycopg

    from backend.store import retention

    cfg = Config.from_env()
    policy = retention.RetentionPolicy.from_config(cfg)
    url, _handle = resolve_database_url(cfg)
    with psycopg.connect(url, autocommit=True, prepare_threshold=None) as conn:
        if args.dry_run or not policy.enabled:
            plans = retention.plan(conn, policy)
        else:
            plans = retention.apply(conn, policy)
            if plans is None:
                print("retention: another session is applying it right now; nothing done")
                return 1
    print(retention.describe(plans, dry_run=args.dry_run))
    return 0


def cmd_supabase_check(args: argparse.Namespace) -> int:
    import psycopg

    from backend.store.supabase_check import check, render
    from backend.store.supabase_hint import missing_database_url

    cfg = Config.from_env()
    if not cfg.database_url:
        print(missing_database_url(cfg.supabase_url or "https://<project-ref>.supabase.co"), file=sys.stderr)
        return 2
    try:
        report = check(cfg)
    except psycopg.OperationalError as exc:
        print(f"cannot connect with DATABASE_URL: {str(exc).strip()}\n(Supabase: the password is the database"
              " password; the direct host db.<ref>.supabase.co is IPv6-only without the IPv4 add-on,"
              " use the pooler string instead)", file=sys.stderr)
        return 1
    print(render(report))
    return 0 if report.ok else 1


def cmd_dashboard_role(args: argparse.Namespace) -> int:
    import getpass

    import psycopg

    from backend.store.dashboard_role import ROLE, set_password

    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass(f"new password for {ROLE}: ")
    url, _handle = resolve_database_url(Config.from_env())
    try:
        with psycopg.connect(url, autocommit=True, prepare_threshold=None) as conn:
            set_password(conn, password)
    except (ValueError, LookupError) as exc:
        print(f"dashboard-role: {exc}", file=sys.stderr)
        return 2
    print(f"password of {ROLE} set (stored as a SCRAM-SHA-256 verifier)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m backend", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the service under gunicorn")
    serve.add_argument("gunicorn_args", nargs=argparse.REMAINDER)
    serve.set_defaults(func=cmd_serve)
    sub.add_parser("migrate", help="apply pending migrations").set_defaults(func=cmd_migrate)
    parts = sub.add_parser("partitions", help="create monthly partitions ahead")
    parts.add_argument("--months", type=int, default=0)
    parts.set_defaults(func=cmd_partitions)
    ret = sub.add_parser("retention", help="drop partitions older than the RETENTION_*_DAYS policy")
    ret.add_argument("--dry-run", action="store_true", help="list what would be dropped; change nothing")
    ret.set_defaults(func=cmd_retention)
    supa = sub.add_parser("supabase", help="check a Supabase (or any PostgreSQL) database for the service")
    supa.add_subparsers(dest="supabase_command", required=True).add_parser(
        "check", help="connect, report pooler mode and version, migrate, list what is missing",
    ).set_defaults(func=cmd_supabase_check)
    dash = sub.add_parser("dashboard-role", help="set the password of the read-only dashboard role")
    dash.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin")
    dash.set_defaults(func=cmd_dashboard_role)
    from backend.fleet.auth.cli import add_key_commands

    add_key_commands(sub, resolve_database_url)  # keys create|list|revoke (backend/fleet/auth/cli.py)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=os.environ.get("LOG_LEVEL") or "INFO",
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
