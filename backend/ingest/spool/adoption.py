"""Adopting the spool directories of dead workers.

A worker holds an exclusive `flock` on its own directory's lock file for as long as it
lives; the kernel drops the lock when the process dies (kill -9 included). Any worker may
adopt a directory whose lock it can take: the owner is gone. The lock stays held while
the adopted segments are replayed, so two workers never replay the same directory at the
same time; checkpoints make a crashed replay resume, and PostgreSQL's unique key makes
the part replayed twice a no-op.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from backend.ingest.spool.checkpoint import CHECKPOINT_SUFFIX
from backend.ingest.spool.segments import LOCK_NAME, SEGMENT_RE, WORKER_PREFIX, list_segments, remove_worker_dir


class Adoption:
    """A dead worker's directory, locked by us until `release()`."""

    def __init__(self, directory: Path, fd: int) -> None:
        self.directory = directory
        self._fd: int | None = fd

    def segments(self) -> list[tuple[int, Path]]:
        return list_segments(self.directory)

    def missing_segments(self) -> int:
        """Segments that vanished: gaps in the sequence, and checkpoints without their segment."""
        seqs = [s for s, _ in self.segments()]
        gaps = {s for a, b in zip(seqs, seqs[1:], strict=False) for s in range(a + 1, b)}
        missing = len(gaps)
        # Every segment gets its checkpoint when it is created, so an orphaned checkpoint
        # also finds a lost first or last segment.
        for cp in self.directory.glob(f"seg-*.wal{CHECKPOINT_SUFFIX}"):
            if not (self.directory / cp.name[: -len(CHECKPOINT_SUFFIX)]).exists():
                m = SEGMENT_RE.match(cp.name[: -len(CHECKPOINT_SUFFIX)])
                if m is None or int(m.group(1)) not in gaps:
                    missing += 1
                cp.unlink(missing_ok=True)
        return missing

    def release(self, remove: bool) -> None:
        if remove:
            remove_worker_dir(self.directory)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def other_worker_dirs(root: Path, own: Path | None) -> list[Path]:
    """Worker directories other than `own` (their owners may be alive or dead), oldest first."""
    out = []
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError:
        return []
    for e in entries:
        if e.name.startswith(WORKER_PREFIX) and e.is_dir() and (own is None or e.path != str(own)):
            out.append(Path(e.path))
    out.sort(key=lambda p: p.stat().st_mtime if p.exists() else 0)
    return out


def try_adopt(directory: Path) -> Adoption | None:
    """Lock a dead worker's directory, or None when its owner is alive (or it is gone)."""
    try:
        fd = os.open(directory / LOCK_NAME, os.O_RDWR)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    if not directory.exists():
        os.close(fd)
        return None
    return Adoption(directory, fd)
