"""The local write-ahead spool: where acknowledged readings wait while PostgreSQL cannot take them.

Layout (SPOOL_DIR, default DATA_DIR/spool):

    <root>/w-<pid>-<random>/lock              one directory per live worker, flock'ed by it
    <root>/w-<pid>-<random>/seg-00000003-<ms>.wal   segments, appended, rolled by size
    <root>/w-<pid>-<random>/seg-00000003-<ms>.wal.done   replay checkpoint, made with the segment
                                               and overwritten in place (spool_checkpoint.py)
    <root>/corrupt/<worker>-<segment> (+ .json)   damaged segments moved aside, with counts
    <root>/.quota                              flock'ed while checking the size bound

A record is one flushed batch: `b"SPL1"`, payload length (u32 LE), CRC32 of length and
payload (u32 LE), then the payload (orjson: every submission with its readings, original
measurement times, original received_at, request id, raw payload and rejected lines).
`append()` writes the record and fsyncs the file (and the directory when a segment is
new) before it returns, so a reading acknowledged as "spooled" survives kill -9 and
power loss of a correctly configured disk.

A worker holds an exclusive `flock` on its own directory's lock file for as long as it
lives; the kernel drops the lock when the process dies (kill -9 included). Any worker may
adopt a directory whose lock it can take: the owner is gone. The lock stays held while
the adopted segments are replayed, so two workers never replay the same directory at the
same time; checkpoints make a crashed replay resume, and PostgreSQL's unique key makes
the part replayed twice a no-op.

Damage (a torn last record, a flipped byte, a missing segment) is survived: every record
whose CRC matches is delivered, the reader resynchronises on the next valid header after
a bad span, corrupt spans are counted, and a damaged segment is moved to `corrupt/` with
a JSON note once its intact records are in PostgreSQL.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import secrets
import struct
import threading
import time
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from backend.ingest.parsing import ParseError, Reading
from backend.ingest.sinks import Submission
from backend.ingest.spool_checkpoint import (
    CHECKPOINT_SUFFIX,
    checkpoint_path,
    create_checkpoint,
    read_checkpoint_full,
)
from backend.ingest.spool_checkpoint import write_checkpoint_full as write_checkpoint_full  # re-exported

log = logging.getLogger(__name__)

MAGIC = b"SPL1"
HEADER = struct.Struct("<4sII")  # magic, payload length, crc32(length || payload)
_LEN = struct.Struct("<I")
MAX_RECORD_BYTES = 512 * 1024 * 1024
WORKER_PREFIX = "w-"
SEGMENT_RE = re.compile(r"^seg-(\d{8})-(\d+)\.wal$")
LOCK_NAME = "lock"
CORRUPT_DIR = "corrupt"
QUOTA_LOCK = ".quota"
# A reading costs about this much in a record (payload with raw text, plus framing).
EST_BYTES_PER_READING = 160
# The smallest record: what "is the spool accepting?" asks room for.
MIN_RECORD_BYTES = HEADER.size + EST_BYTES_PER_READING
# What a new segment costs beyond its record: its checkpoint's block.
NEW_SEGMENT_BYTES = 4096


class SpoolFull(RuntimeError):
    """The spool refused a batch (size bound, nearly full disk, write error, disabled)."""


# ---- record framing --------------------------------------------------------------------


def _crc(length: int, payload: bytes | memoryview) -> int:
    return zlib.crc32(payload, zlib.crc32(_LEN.pack(length))) & 0xFFFFFFFF


def frame(payload: bytes) -> bytes:
    return HEADER.pack(MAGIC, len(payload), _crc(len(payload), payload)) + payload


@dataclass(slots=True)
class RecordSpan:
    """One span of a segment: an intact record (`payload`) or a corrupt span (`problem`)."""

    offset: int
    end: int
    payload: bytes | None = None
    problem: str | None = None


def _valid_at(data: bytes, pos: int) -> int | None:
    """End offset of the intact record starting at `pos`, or None."""
    if len(data) - pos < HEADER.size:
        return None
    magic, length, crc = HEADER.unpack_from(data, pos)
    if magic != MAGIC or length > MAX_RECORD_BYTES:
        return None
    end = pos + HEADER.size + length
    if end > len(data):
        return None
    if _crc(length, memoryview(data)[pos + HEADER.size:end]) != crc:
        return None
    return end


def _resync(data: bytes, start: int) -> int | None:
    pos = data.find(MAGIC, start)
    while pos != -1:
        if _valid_at(data, pos) is not None:
            return pos
        pos = data.find(MAGIC, pos + 1)
    return None


def iter_spans(data: bytes, start: int = 0) -> Iterator[RecordSpan]:
    """Every intact record and every corrupt span of a segment's bytes, in order."""
    pos = start
    n = len(data)
    while pos < n:
        end = _valid_at(data, pos)
        if end is not None:
            yield RecordSpan(pos, end, payload=bytes(memoryview(data)[pos + HEADER.size:end]))
            pos = end
            continue
        if n - pos < HEADER.size:
            problem = "truncated header at the end"
        else:
            magic, length, _crc_value = HEADER.unpack_from(data, pos)
            if magic != MAGIC or length > MAX_RECORD_BYTES:
                problem = "bad record header"
            elif pos + HEADER.size + length > n:
                problem = "truncated record"
            else:
                problem = "checksum mismatch"
        nxt = _resync(data, pos + 1)
        yield RecordSpan(pos, nxt if nxt is not None else n, problem=problem)
        if nxt is None:
            return
        pos = nxt


# ---- batch encoding ----------------------------------------------------------------------


def encode_batch(batch: list[Submission]) -> bytes:
    subs = []
    for s in batch:
        subs.append({
            "id": str(s.request_id),
            "rx": s.received_at,
            "dev": s.device_id,
            "ct": s.content_type,
            "pv": s.parser_version,
            "ds": s.data_source,
            "raw": s.raw_payload,
            "r": [[r.device_id, r.metric, r.ts, r.value, r.value_text] for r in s.readings],
            "rej": [[e.position, e.reason, e.raw] for e in s.rejected],
            # Optional (records of older versions lack them): a replayed server-timed reading
            # must still move past another request's reading instead of merging with it.
            "pos": s.positions,
            "st": s.server_timed,
        })
    return orjson.dumps({"v": 1, "subs": subs})


def decode_batch(payload: bytes) -> list[Submission]:
    doc = orjson.loads(payload)
    if not isinstance(doc, dict) or doc.get("v") != 1:
        raise ValueError(f"unknown spool record version {doc.get('v') if isinstance(doc, dict) else None!r}")
    out: list[Submission] = []
    parse_ts = datetime.fromisoformat
    for s in doc["subs"]:
        readings = [Reading(d, m, parse_ts(ts), v, t) for d, m, ts, v, t in s["r"]]
        out.append(Submission(
            request_id=uuid.UUID(s["id"]),
            readings=readings,
            received_at=parse_ts(s["rx"]),
            raw_payload=s.get("raw"),
            content_type=s.get("ct"),
            device_id=s.get("dev"),
            parser_version=s.get("pv") or "",
            data_source=s.get("ds") or "",
            rejected=[ParseError(p, r, raw or "") for p, r, raw in s.get("rej") or ()],
            positions=list(s.get("pos") or ()),
            server_timed=list(s.get("st") or ()),
        ))
    return out


# ---- segments on disk ------------------------------------------------------------------


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


def read_checkpoint(path: Path) -> int:
    return read_checkpoint_full(path)[0]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class _Segment:
    seq: int
    path: Path
    size: int = 0
    records: int = 0
    readings: int = 0
    oldest_received: datetime | None = None
    fd: int | None = None


@dataclass
class SpoolCounters:
    appended_records: int = 0
    appended_readings: int = 0
    appended_bytes: int = 0
    refused_batches: int = 0
    refused_readings: int = 0
    replayed_records: int = 0
    replayed_readings: int = 0
    replay_inserted: int = 0
    replay_duplicates: int = 0
    replay_chunks: int = 0
    replay_failures: int = 0
    corrupt_records: int = 0
    corrupt_bytes: int = 0
    corrupt_segments: int = 0
    missing_segments: int = 0
    adopted_dirs: int = 0
    last_replay_at: datetime | None = None
    last_problem: str | None = None
    last_problem_at: datetime | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Adoption:
    """A dead worker's directory, locked by us until `release()`."""

    def __init__(self, directory: Path, fd: int) -> None:
        self.directory = directory
        self._fd = fd

    def segments(self) -> list[tuple[int, Path]]:
        return list_segments(self.directory)

    def release(self, remove: bool) -> None:
        if remove:
            _remove_worker_dir(self.directory)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _remove_worker_dir(directory: Path) -> None:
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
        self._active: _Segment | None = None
        self._sealed: list[_Segment] = []
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
        self.root.mkdir(parents=True, exist_ok=True)
        name = f"{WORKER_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
        tmp = self.root / f".tmp-{name}"
        tmp.mkdir()
        fd = os.open(tmp / LOCK_NAME, os.O_CREAT | os.O_RDWR, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, f"{os.getpid()}\n".encode())
        # Only a locked directory ever carries the w- name, so nobody adopts a live one.
        os.rename(tmp, self.root / name)
        if self.fsync:
            _fsync_dir(self.root)
        self.dir = self.root / name
        self._lockfd = fd
        # Made now, while there is room: moving a damaged segment aside on a full disk
        # must not need a new directory.
        (self.root / CORRUPT_DIR).mkdir(exist_ok=True)
        self._cleanup_stale_tmp()
        return self

    def _cleanup_stale_tmp(self) -> None:
        # .tmp-* directories are left only by a crash inside open(); they never hold data.
        for e in os.scandir(self.root):
            if e.name.startswith(".tmp-w-") and e.is_dir():
                try:
                    if time.time() - e.stat().st_mtime > 60:
                        for f in os.scandir(e.path):
                            os.unlink(f.path)
                        os.rmdir(e.path)
                except OSError:
                    pass

    def close(self) -> None:
        """Seal the active segment and release the lock; an empty directory is removed."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._seal_locked()
            if self.dir is not None and not list_segments(self.dir):
                _remove_worker_dir(self.dir)
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
                _write_all(seg.fd, record)
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
                _fsync_dir(self.dir)
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

    def _open_segment(self) -> _Segment:
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
        self._active = _Segment(seq, path, fd=fd)
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

    def has_own_backlog(self) -> bool:
        with self._lock:
            return bool(self._sealed) or (self._active is not None and self._active.records > 0)

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
        out = []
        try:
            entries = list(os.scandir(self.root))
        except FileNotFoundError:
            return []
        for e in entries:
            if e.name.startswith(WORKER_PREFIX) and e.is_dir() and (self.dir is None or e.path != str(self.dir)):
                out.append(Path(e.path))
        out.sort(key=lambda p: p.stat().st_mtime if p.exists() else 0)
        return out

    def try_adopt(self, directory: Path) -> Adoption | None:
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

    # ---- status ----------------------------------------------------------------------

    def usage(self, max_age: float = 0.0) -> dict[str, Any]:
        """Bytes and segments across every worker directory (what counts against the bound)."""
        now = time.monotonic()
        cached = self._usage_cache
        if cached is not None and now - cached[0] <= max_age:
            return cached[1]
        total = segments = dirs = 0
        oldest: float | None = None
        try:
            entries = list(os.scandir(self.root))
        except FileNotFoundError:
            entries = []
        for e in entries:
            if not (e.name.startswith(WORKER_PREFIX) and e.is_dir()):
                continue
            dirs += 1
            for _seq, path in list_segments(Path(e.path)):
                try:
                    total += path.stat().st_size
                except FileNotFoundError:
                    continue
                segments += 1
                created = segment_created(path)
                oldest = created if oldest is None else min(oldest, created)
        info = {"bytes": total, "segments": segments, "worker_dirs": dirs, "oldest_segment_created": oldest}
        self._usage_cache = (now, info)
        return info

    def corrupt_totals(self) -> dict[str, int]:
        """Counts from the notes in corrupt/ (every worker's, persistent across restarts)."""
        now = time.monotonic()
        cached = self._corrupt_cache
        if cached is not None and now - cached[0] < 1.0:
            return cached[1]
        totals = {"segments": 0, "records": 0, "bytes": 0, "missing_segments": 0}
        aside = self.root / CORRUPT_DIR
        if aside.is_dir():
            for e in os.scandir(aside):
                if e.name.endswith(".json"):
                    try:
                        note = orjson.loads(Path(e.path).read_bytes())
                    except (OSError, orjson.JSONDecodeError):
                        continue
                    if "missing_segments" in note:
                        totals["missing_segments"] += int(note["missing_segments"])
                        continue
                    totals["segments"] += 1
                    totals["records"] += int(note.get("corrupt_records", 0))
                    totals["bytes"] += int(note.get("corrupt_bytes", 0))
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
            "appended_records_total": c.appended_records,
            "appended_readings_total": c.appended_readings,
            "refused_readings_total": c.refused_readings,
            "replayed_records_total": c.replayed_records,
            "replayed_readings_total": c.replayed_readings,
            "replay_inserted_total": c.replay_inserted,
            "replay_duplicates_total": c.replay_duplicates,
            "replay_chunks_total": c.replay_chunks,
            "replay_failures_total": c.replay_failures,
            "adopted_dirs_total": c.adopted_dirs,
            "corrupt_records_total": c.corrupt_records,
            "corrupt_segments_total": c.corrupt_segments,
            "missing_segments_total": c.missing_segments,
            "corrupt_on_disk": corrupt,
            "last_replay_at": c.last_replay_at.isoformat().replace("+00:00", "Z") if c.last_replay_at else None,
            "last_problem": c.last_problem,
            "last_problem_at": c.last_problem_at.isoformat().replace("+00:00", "Z") if c.last_problem_at else None,
        }

    def note_problem(self, message: str) -> None:
        self.counters.last_problem = message[:500]
        self.counters.last_problem_at = datetime.now(UTC)


def _write_all(fd: int | None, data: bytes) -> None:
    assert fd is not None
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
