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
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

EXIT_CODE = 86


class Faults:
    """The armed fault points of this process; `Faults()` is inert (production)."""

    def __init__(self, points: frozenset[str] = frozenset(), marker_dir: Path | None = None) -> None:
        self.points = points
        self.marker_dir = marker_dir

    @classmethod
    def from_config(cls, spec: str, testing: bool, marker_dir: str | Path | None) -> Faults:
        """Arm the points in `spec` (FAULT_POINT), ignored unless `testing`."""
        names = {p.strip() for p in (spec or "").split(",") if p.strip()}
        if names and not testing:
            log.warning("FAULT_POINT=%s ignored: fault injection needs TESTING=1", spec)
            names = set()
        return cls(frozenset(names), Path(marker_dir) if marker_dir else None)

    def hook(self, point: str) -> Callable[..., None] | None:
        """A callback that hits `point`, or None when it is not armed (nothing to call)."""
        return (lambda *_args: self.hit(point)) if point in self.points else None

    def hit(self, point: str) -> None:
        """Exit the process here if `point` is armed and has not fired yet."""
        if point not in self.points:
            return
        if self.marker_dir is not None:
            try:
                self.marker_dir.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.marker_dir / f".fault-{point}", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
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
