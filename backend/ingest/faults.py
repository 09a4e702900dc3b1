"""Fault injection for crash tests: `os._exit` at named points, honoured only when TESTING.

FAULT_POINT names one or more points (comma-separated). Each point fires once per marker
directory (the spool root): the first process to reach it creates `.fault-<point>` and
exits at once, like a power cut or kill -9, without flushing or cleaning up anything.
The worker that gunicorn starts next finds the marker and carries on, so a test sees one
crash, then the recovery, and no crash loop.

Points in the code:
  after_commit        replayer: a chunk committed in PostgreSQL, before its spool
                      checkpoint is written (the replay must then make no duplicates)
  after_live_commit   flusher: a live batch committed, before the waiting requests are told
  after_spool_append  flusher: a batch appended and fsync'd, before the requests are told
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

log = logging.getLogger(__name__)

EXIT_CODE = 86
_points: frozenset[str] = frozenset()
_marker_dir: Path | None = None


def configure(spec: str, testing: bool, marker_dir: str | Path | None) -> None:
    """Arm the points in `spec` (ignored unless `testing`)."""
    global _points, _marker_dir
    names = {p.strip() for p in (spec or "").split(",") if p.strip()}
    if names and not testing:
        log.warning("FAULT_POINT=%s ignored: fault injection needs TESTING=1", spec)
        names = set()
    _points = frozenset(names)
    _marker_dir = Path(marker_dir) if marker_dir else None


def armed(point: str) -> bool:
    return point in _points


def hit(point: str) -> None:
    """Exit the process here if `point` is armed and has not fired yet."""
    if point not in _points:
        return
    if _marker_dir is not None:
        try:
            _marker_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(_marker_dir / f".fault-{point}", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return  # fired before: run normally from now on
        os.write(fd, f"{os.getpid()}\n".encode())
        os.fsync(fd)
        os.close(fd)
    msg = f"FAULT {point}: pid {os.getpid()} exits now (FAULT_POINT, testing only)\n"
    try:
        sys.stderr.write(msg)
        sys.stderr.flush()
    except OSError:
        pass
    os._exit(EXIT_CODE)
