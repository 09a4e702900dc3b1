"""The local write-ahead spool: where acknowledged readings wait while PostgreSQL cannot take them.

Layout on disk: segments.py; record format: framing.py; checkpoints: checkpoint.py;
dead workers' directories: adoption.py.

A record is one flushed batch. `append()` writes the record and fsyncs the file (and the
directory when a segment is new) before it returns, so a reading acknowledged as
"spooled" survives kill -9 and power loss of a correctly configured disk.

Damage (a torn last record, a flipped byte, a missing segment) is survived: every record
whose CRC matches is delivered, corrupt spans are counted, and a damaged segment is moved
to `corrupt/` with a JSON note once its intact records are in PostgreSQL.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from backend.ingest.sinks import Submission
from backend.ingest.spool.accounting import SpoolCounters, corrupt_notes, disk_usage
from backend.ingest.spool.adoption import Adoption, other_worker_dirs, try_adopt
from backend.ingest.spool.checkpoint import checkpoint_path, create_checkpoint
from backend.ingest.spool.framing import HEADER, encode_batch, frame
from backend.ingest.spool.segments import (
    CORRUPT_DIR,
    QUOTA_LOCK,
    Segment,
    create_worker_dir,
    fsync_dir,
    list_segments,
    remove_worker_dir,
    segment_name,
    write_all,
)

log = logging.getLogger(__name__)

# A reading costs about this much in a record (payload with raw text, plus framing).
EST_BYTES_PER_READING = 160
# The smallest record: what "is the spool accepting?" asks room for.
MIN_RECORD_BYTES = HEADER.size + EST_BYTES_PER_READING
# What a new segment costs beyond its record: its checkpoint's block.
NEW_SEGMENT_BYTES = 4096


class SpoolFull(RuntimeError):
    """The spool refused a batch (size bound, nearly full disk, write error, disabled)."""


class Spool:
    """One worker's view of the spool: its own directory to append to, and the others to adopt."""

    def __init__(self, root: str | Path, *, max_bytes: int, min_free_bytes: int,
                 segment_bytes: int = 8 * 1024 * 1024, fsync: bool = True) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.min_free_bytes = min_free_bytes
        self.segment_bytes = max(4096, segment_bytes)
        self.fsync = fsync
        self.counters = SpoolCounters()
        self.dir: Path | None = None
        self._lockfd: int | None = None
        self._lock = threading.Lock()
        self._active: Segment | None = None
        self._sealed: list[Segment] = []
        self._next_seq = 1
        self._closed = False
        self._usage_cache: tuple[float, dict[str, Any]] | None = None
        self._accept_cache: tuple[float, bool, str] | None = None
        self._corrupt_cache: tuple[float, dict[str, int]] | None = None
        # Free bytes when a write last failed with ENOSPC: statvfs can show a few bytes free
        # that no write can use, so the spool refuses until the disk has more than that.
        self._enospc_free: int | None = None

    # ---- lifecycle -------------------------------------------------------------------

    def open(self) -> Spool:
        """Create and lock this worker's directory (a fresh one per process)."""
        self.dir, self._lockfd = create_worker_dir(self.root, self.fsync)
        return self

    def close(self) -> None:
        """Seal the active segment and release the lock; an empty directory is removed."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._seal_locked()
            if self.dir is not None and not list_segments(self.dir):
                remove_worker_dir(self.dir)
            if self._lockfd is not None:
                os.close(self._lockfd)
                self._lockfd = None

    # ---- appending (the flusher thread) ---------------------------------------------

    def accepts(self, rows: int) -> bool:
        """Cheap guess whether a batch of `rows` readings would be taken (cached briefly)."""
        now = time.monotonic()
        cached = self._accept_cache
        if cached is None or now - cached[0] > 0.1:
            ok, reason = self._room_for(rows * EST_BYTES_PER_READING)
            self._accept_cache = cached = (now, ok, reason)
        return cached[1]

    def refusal_reason(self) -> str:
        cached = self._accept_cache
        return cached[2] if cached and not cached[1] else ""

    def _room_for(self, nbytes: int) -> tuple[bool, str]:
        if self._closed or self.dir is None:
            return False, "spool closed"
        if self.max_bytes <= 0:
            return False, "spool disabled"
        used = self.usage()["bytes"]
        if used + nbytes > self.max_bytes:
            return False, f"spool full ({used} of {self.max_bytes} bytes, SPOOL_MAX_BYTES)"
        free = self.free_bytes()
        if self._enospc_free is not None and free > self._enospc_free:
            self._enospc_free = None  # space was freed since the failed write: try again
        if free < nbytes or self._enospc_free is not None:
            return False, f"disk full ({free} bytes free; a replay or an operator must free space)"
        if free - nbytes < self.min_free_bytes:
            return False, f"disk nearly full ({free} bytes free, SPOOL_MIN_FREE_BYTES={self.min_free_bytes})"
        return True, ""

    def free_bytes(self) -> int:
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize

    def append(self, batch: list[Submission]) -> int:
        """Write the batch as one record and fsync it; returns its size. Raises SpoolFull."""
        rows = sum(len(s.readings) for s in batch)
        record = frame(encode_batch(batch))
        with self._lock:
            try:
                self._append_locked(batch, record, rows)
            except SpoolFull as exc:
                self.counters.refused_batches += 1
                self.counters.refused_readings += rows
                self._accept_cache = (time.monotonic(), False, str(exc))
                raise
        return len(record)

    def _append_locked(self, batch: list[Submission], record: bytes, rows: int) -> None:
        if self._closed or self.dir is None:
            raise SpoolFull("spool closed")
        qfd = os.open(self.root / QUOTA_LOCK, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            # Check and write under one cross-process lock, so workers together stay
            # within SPOOL_MAX_BYTES. The fsync happens after the lock is released.
            fcntl.flock(qfd, fcntl.LOCK_EX)
            self._usage_cache = None
            seg = self._active
            roll = seg is not None and seg.size > 0 and seg.size + len(record) > self.segment_bytes
            new = seg is None or roll
            ok, reason = self._room_for(len(record) + (NEW_SEGMENT_BYTES if new else 0))
            if not ok:
                raise SpoolFull(reason)
            if roll:
                self._seal_locked()
            if new:
                seg = self._open_segment()
            assert seg is not None
            try:
                write_all(seg.fd, record)
            except OSError as exc:
                os.ftruncate(seg.fd, seg.size)  # never leave half a record behind
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    self._enospc_free = self._free_or_zero()
                    raise SpoolFull(f"disk full: {exc}") from exc
                raise SpoolFull(f"spool write failed: {exc}") from exc
        finally:
            os.close(qfd)  # releases the flock
        if self.fsync:
            os.fsync(seg.fd)
            if new:
                fsync_dir(self.dir)
        seg.size += len(record)
        seg.records += 1
        seg.readings += rows
        oldest = min(s.received_at for s in batch)
        if seg.oldest_received is None or oldest < seg.oldest_received:
            seg.oldest_received = oldest
        c = self.counters
        c.appended_records += 1
        c.appended_readings += rows
        c.appended_bytes += len(record)
        self._usage_cache = None

    def _free_or_zero(self) -> int:
        try:
            return self.free_bytes()
        except OSError:
            return 0

    def _open_segment(self) -> Segment:
        assert self.dir is not None
        seq = self._next_seq
        self._next_seq += 1
        path = self.dir / segment_name(seq)
        fd = -1
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_APPEND, 0o644)
            # The replay's position record is allocated now, while there is room, so that
            # replaying needs no new space even when the disk has filled up meanwhile.
            create_checkpoint(path, sync=self.fsync)
        except OSError as exc:
            if fd >= 0:
                os.close(fd)
                path.unlink(missing_ok=True)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                self._enospc_free = self._free_or_zero()
                raise SpoolFull(f"disk full: {exc}") from exc
            raise SpoolFull(f"spool write failed: {exc}") from exc
        self._active = Segment(seq, path, fd=fd)
        return self._active

    def _seal_locked(self) -> None:
        seg = self._active
        if seg is None:
            return
        self._active = None
        if seg.fd is not None:
            os.close(seg.fd)
            seg.fd = None
        if seg.records:
            self._sealed.append(seg)
        else:
            # Checkpoint first: a checkpoint without its segment would look like a lost segment.
            checkpoint_path(seg.path).unlink(missing_ok=True)
            seg.path.unlink(missing_ok=True)

    # ---- replay side -----------------------------------------------------------------

    def take_own_segments(self) -> list[Path]:
        """Seal what was appended so far; the sealed segments (oldest first) to replay."""
        with self._lock:
            if self._active is not None and self._active.records:
                self._seal_locked()
            return [s.path for s in self._sealed]

    def segment_done(self, path: Path) -> None:
        """Every record of `path` is in PostgreSQL: delete it and its checkpoint."""
        # Checkpoint first: a checkpoint without its segment would look like a lost segment.
        # Only unlinks: finishing a segment frees space and never needs any.
        for p in (checkpoint_path(path), path):
            try:
                p.unlink()
            except FileNotFoundError:
                pass
        with self._lock:
            self._sealed = [s for s in self._sealed if s.path != path]
        self._usage_cache = None

    def note_progress(self, path: Path, readings: int) -> None:
        with self._lock:
            for s in self._sealed:
                if s.path == path:
                    s.readings = max(0, s.readings - readings)

    def move_aside(self, path: Path, note: dict[str, Any]) -> Path:
        """Move a damaged segment to corrupt/ with a JSON note (its intact records are delivered)."""
        aside_dir = self.root / CORRUPT_DIR
        aside_dir.mkdir(exist_ok=True)
        target = aside_dir / f"{path.parent.name}-{path.name}"
        # On a full disk only the note needs new space, so it comes last and may fail: the
        # segment is out of the replay's way either way (a crash before the rename means
        # its intact records are replayed again, as no-ops).
        checkpoint_path(path).unlink(missing_ok=True)
        os.replace(path, target)
        note_path = aside_dir / (target.name + ".json")
        try:
            note_path.write_bytes(orjson.dumps(note, option=orjson.OPT_INDENT_2))
        except OSError as exc:
            note_path.unlink(missing_ok=True)
            msg = f"{target.name}: note not written ({exc}); its counts are in the log only"
            log.error("spool: %s", msg)
            self.note_problem(msg)
        with self._lock:
            self._sealed = [s for s in self._sealed if s.path != path]
            self.counters.corrupt_segments += 1
        self._corrupt_cache = None
        self._usage_cache = None
        return target

    def orphan_dirs(self) -> list[Path]:
        """Worker directories other than ours (their owners may be alive or dead)."""
        return other_worker_dirs(self.root, self.dir)

    def try_adopt(self, directory: Path) -> Adoption | None:
        """Lock a dead worker's directory, or None when its owner is alive (or it is gone)."""
        return try_adopt(directory)

    def write_note(self, name: str, note: dict[str, Any]) -> None:
        """Leave a JSON note in corrupt/ (counted by corrupt_totals); a full disk only logs it."""
        aside = self.root / CORRUPT_DIR
        try:
            aside.mkdir(exist_ok=True)
            (aside / name).write_bytes(orjson.dumps(note, option=orjson.OPT_INDENT_2))
        except OSError as exc:  # a full disk must not stop the replay for want of a note
            (aside / name).unlink(missing_ok=True)
            log.error("spool: note %s not written (%s): %s", name, exc, note)
        self._corrupt_cache = None

    def dead_letter(self, sub: Submission, error: str) -> None:
        """Keep a request the database refuses for good in corrupt/dead-letter.jsonl."""
        aside = self.root / CORRUPT_DIR
        aside.mkdir(exist_ok=True)
        line = orjson.dumps({"error": error[:500], "at": datetime.now(UTC).isoformat(),
                             "batch": orjson.loads(encode_batch([sub]))})
        with open(aside / "dead-letter.jsonl", "ab") as f:
            f.write(line + b"\n")
        self.counters.extra["dead_letter_readings"] = (
            self.counters.extra.get("dead_letter_readings", 0) + len(sub.readings))

    # ---- status ----------------------------------------------------------------------

    def usage(self, max_age: float = 0.0) -> dict[str, Any]:
        """Bytes and segments across every worker directory (what counts against the bound)."""
        now = time.monotonic()
        cached = self._usage_cache
        if cached is not None and now - cached[0] <= max_age:
            return cached[1]
        info = disk_usage(self.root)
        self._usage_cache = (now, info)
        return info

    def corrupt_totals(self) -> dict[str, int]:
        """Counts from the notes in corrupt/ (every worker's, persistent across restarts)."""
        now = time.monotonic()
        cached = self._corrupt_cache
        if cached is not None and now - cached[0] < 1.0:
            return cached[1]
        totals = corrupt_notes(self.root)
        self._corrupt_cache = (now, totals)
        return totals

    def own_pending(self) -> tuple[int, int, datetime | None]:
        """(records, readings, oldest received_at) still in this worker's own segments."""
        with self._lock:
            segs = list(self._sealed) + ([self._active] if self._active is not None else [])
            records = sum(s.records for s in segs)
            readings = sum(s.readings for s in segs)
            olds = [s.oldest_received for s in segs if s.oldest_received is not None and s.records]
        return records, readings, (min(olds) if olds else None)

    def status(self) -> dict[str, Any]:
        usage = self.usage(max_age=0.5)
        records, readings, oldest = self.own_pending()
        now = datetime.now(UTC)
        ages = []
        if oldest is not None:
            ages.append((now - oldest).total_seconds())
        if usage["oldest_segment_created"] is not None:
            ages.append(time.time() - usage["oldest_segment_created"])
        try:
            free = self.free_bytes()
        except OSError:
            free = None
        # Room for the smallest record, not for nothing: on a disk full to the last byte
        # "room for 0 bytes" said accepting while every append failed (issue 11).
        ok, reason = self._room_for(MIN_RECORD_BYTES) if self.dir is not None else (False, "spool not open")
        c = self.counters
        corrupt = self.corrupt_totals()
        return {
            "enabled": self.max_bytes > 0,
            "dir": str(self.root),
            "worker_dir": self.dir.name if self.dir else None,
            "worker_pid": os.getpid(),
            "depth_bytes": usage["bytes"],
            "depth_segments": usage["segments"],
            "worker_dirs": usage["worker_dirs"],
            "own_pending_records": records,
            "own_pending_readings": readings,
            "oldest_unflushed_age_s": round(max(ages), 3) if ages else 0.0,
            "max_bytes": self.max_bytes,
            "min_free_bytes": self.min_free_bytes,
            "free_bytes": free,
            "accepting": ok,
            "refusal_reason": reason or None,
            **c.totals(),
            "corrupt_on_disk": corrupt,
        }

    def note_problem(self, message: str) -> None:
        self.counters.last_problem = message[:500]
        self.counters.last_problem_at = datetime.now(UTC)

