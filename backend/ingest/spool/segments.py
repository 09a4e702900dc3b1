"""Where the spool keeps things on disk: worker directories, segment names, listing, removal.

    <root>/w-<pid>-<random>/lock              one directory per live worker, flock'ed by it
    <root>/w-<pid>-<random>/seg-00000003-<ms>.wal   segments, appended, rolled by size
    <root>/w-<pid>-<random>/seg-00000003-<ms>.wal.done   replay checkpoint (checkpoint.py)
    <root>/corrupt/<worker>-<segment> (+ .json)   damaged segments moved aside, with counts
    <root>/.quota                              flock'ed while checking the size bound
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import secrets
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from backend.ingest.spool.checkpoint import CHECKPOINT_SUFFIX

log = logging.getLogger(__name__)

WORKER_PREFIX = "w-"
SEGMENT_RE = re.compile(r"^seg-(\d{8})-(\d+)\.wal$")
LOCK_NAME = "lock"
CORRUPT_DIR = "corrupt"
QUOTA_LOCK = ".quota"


def segment_name(seq: int) -> str:
    return f"seg-{seq:08d}-{int(time.time() * 1000)}.wal"


def list_segments(directory: Path) -> list[tuple[int, Path]]:
    """(sequence number, path) of a worker directory's segments, oldest first."""
    out = []
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return []
    for e in entries:
        m = SEGMENT_RE.match(e.name)
        if m:
            out.append((int(m.group(1)), Path(e.path)))
    out.sort()
    return out


def segment_created(path: Path) -> float:
    m = SEGMENT_RE.match(path.name)
    return int(m.group(2)) / 1000 if m else 0.0


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int | None, data: bytes) -> None:
    assert fd is not None
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


@dataclass
class Segment:
    """This worker's bookkeeping for one of its own segments."""

    seq: int
    path: Path
    size: int = 0
    records: int = 0
    readings: int = 0
    oldest_received: datetime | None = None
    fd: int | None = None


def remove_worker_dir(directory: Path) -> None:
    for e in list(os.scandir(directory)) if directory.exists() else []:
        if e.name == LOCK_NAME:
            continue
        if e.name.endswith((CHECKPOINT_SUFFIX, ".tmp")):
            os.unlink(e.path)
    try:
        os.unlink(directory / LOCK_NAME)
    except FileNotFoundError:
        pass
    try:
        os.rmdir(directory)
    except FileNotFoundError:
        pass
    except OSError as exc:
        # Something unexpected is left in there: keep it for an operator, out of the way.
        aside = directory.parent / CORRUPT_DIR / f"leftover-{directory.name}"
        aside.parent.mkdir(exist_ok=True)
        log.warning("spool: %s not empty after replay (%s); moved to %s", directory, exc, aside)
        os.replace(directory, aside)


def create_worker_dir(root: Path, fsync: bool) -> tuple[Path, int]:
    """Create and flock a fresh worker directory; (its path, the lock's fd, held while we live)."""
    root.mkdir(parents=True, exist_ok=True)
    name = f"{WORKER_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
    tmp = root / f".tmp-{name}"
    tmp.mkdir()
    fd = os.open(tmp / LOCK_NAME, os.O_CREAT | os.O_RDWR, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, f"{os.getpid()}\n".encode())
    # Only a locked directory ever carries the w- name, so nobody adopts a live one.
    os.rename(tmp, root / name)
    if fsync:
        fsync_dir(root)
    # Made now, while there is room: moving a damaged segment aside on a full disk
    # must not need a new directory.
    (root / CORRUPT_DIR).mkdir(exist_ok=True)
    _cleanup_stale_tmp(root)
    return root / name, fd


def _cleanup_stale_tmp(root: Path) -> None:
    # .tmp-* directories are left only by a crash inside create_worker_dir(); they never hold data.
    for e in os.scandir(root):
        if e.name.startswith(".tmp-w-") and e.is_dir():
            try:
                if time.time() - e.stat().st_mtime > 60:
                    for f in os.scandir(e.path):
                        os.unlink(f.path)
                    os.rmdir(e.path)
            except OSError:
                pass
