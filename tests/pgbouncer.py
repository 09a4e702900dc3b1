"""Debian's PgBouncer as a child process on a free port, between the service and PostgreSQL.

Transaction pooling by default, as Supabase's Supavisor on 6543: a client connection owns a
server connection only for one transaction, so session state (prepared statements, session
advisory locks, SET) does not follow it. Trust auth, as this machine's PostgreSQL has; the
names that connect must be in the auth file even so. PgBouncer refuses to run as root: it is
started with `-u nobody` from a directory nobody can read.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

import psycopg

from tests.live_server import free_port, wait_for

BINARY = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"


def available() -> bool:
    return os.path.exists(BINARY)


class PgBouncer:
    def __init__(self, upstream_url: str, pool_mode: str = "transaction", pool_size: int = 20,
                 users: tuple[str, ...] = ("postgres",), port: int | None = None) -> None:
        info = psycopg.conninfo.conninfo_to_dict(upstream_url)
        self.upstream_host = str(info.get("host") or "127.0.0.1")
        self.upstream_port = int(info.get("port") or 5432)
        self.pool_mode = pool_mode
        self.pool_size = pool_size
        self.users = users
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="telemetry-pgbouncer-"))
        self.dir.chmod(0o755)
        self.proc: subprocess.Popen | None = None

    def url_for(self, database_url: str) -> str:
        """`database_url` with its host and port replaced by this pooler's."""
        info = psycopg.conninfo.conninfo_to_dict(database_url)
        info.update(host="127.0.0.1", port=str(self.port))
        return psycopg.conninfo.make_conninfo(**info)

    def _write_config(self) -> Path:
        users = self.dir / "userlist.txt"
        users.write_text("".join(f'"{u}" ""\n' for u in self.users))
        ini = self.dir / "pgbouncer.ini"
        ini.write_text(f"""[databases]
* = host={self.upstream_host} port={self.upstream_port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {self.port}
unix_socket_dir =
auth_type = trust
auth_file = {users}
pool_mode = {self.pool_mode}
default_pool_size = {self.pool_size}
max_client_conn = 1000
server_lifetime = 3600
ignore_startup_parameters = extra_float_digits,options
admin_users = postgres
""")
        for path in (users, ini):
            path.chmod(0o644)
        return ini

    def start(self) -> PgBouncer:
        ini = self._write_config()
        cmd = [BINARY, *(["-u", "nobody"] if os.geteuid() == 0 else []), str(ini)]
        log = open(self.dir / "pgbouncer.log", "ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

        def listening() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self.log_tail()
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return True
            except OSError:
                return False

        wait_for(listening, timeout=15)
        return self

    def stop(self) -> None:
        """Immediate shutdown (SIGINT): clients see their connections closed, as in an outage."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def show(self, what: str) -> list[dict[str, object]]:
        """SHOW POOLS / STATS / CLIENTS ... on the admin console."""
        url = f"host=127.0.0.1 port={self.port} dbname=pgbouncer user=postgres"
        with psycopg.connect(url, autocommit=True, prepare_threshold=None) as conn:
            cur = conn.execute(f"SHOW {what}")
            names = [c.name for c in cur.description or []]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join((self.dir / "pgbouncer.log").read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
