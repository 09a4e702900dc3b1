"""Replay checkpoints that are updated without needing a single new byte of disk.

A segment's checkpoint (`<segment>.done`) says how far its replay got. It is created,
full size, together with the segment (while the spool still has room), and from then on
only overwritten in place: `pwrite` of a fixed-size slot into blocks the file already owns,
then `fdatasync`. No temporary file, no rename, no growth, so the replay records its
position even on a disk full to the last byte (issue 11: the old write-a-new-file-and-
rename checkpoint failed with ENOSPC and the replay never passed its first chunk).

Layout: two slots, each in its own 512-byte sector, so a torn write can damage only the
slot being written. Slot = magic, generation, offset, corrupt records, corrupt bytes,
CRC32. A write goes to the slot of generation n+1 (n+1 mod 2); the reader takes the valid
slot with the highest generation. A torn write therefore leaves the previous checkpoint
readable: the replay resumes from an earlier offset and re-sends a chunk, which the
idempotent insert makes a no-op. Losing position that way is harmless; skipping ahead is
impossible, since a slot is only trusted when its CRC matches.

Checkpoints written by older versions (text: "offset records bytes") are still read.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

CHECKPOINT_SUFFIX = ".done"
MAGIC = b"SPC2"
_SLOT = struct.Struct("<4sQQQQI")  # magic, generation, offset, corrupt records, corrupt bytes, crc32
SLOT_STRIDE = 512  # one sector per slot
CHECKPOINT_BYTES = 2 * SLOT_STRIDE


def checkpoint_path(segment: Path) -> Path:
    return segment.parent / (segment.name + CHECKPOINT_SUFFIX)


def _pack(generation: int, offset: int, records: int, nbytes: int) -> bytes:
    body = _SLOT.pack(MAGIC, generation, offset, records, nbytes, 0)[:-4]
    return body + struct.pack("<I", zlib.crc32(body) & 0xFFFFFFFF)


def _unpack(data: bytes) -> tuple[int, int, int, int] | None:
    if len(data) < _SLOT.size:
        return None
    magic, gen, offset, records, nbytes, crc = _SLOT.unpack_from(data)
    if magic != MAGIC or zlib.crc32(data[:_SLOT.size - 4]) & 0xFFFFFFFF != crc:
        return None
    return gen, offset, records, nbytes


def _best(data: bytes) -> tuple[int, int, int, int] | None:
    slots = [s for s in (_unpack(data[i * SLOT_STRIDE:(i + 1) * SLOT_STRIDE]) for i in range(2)) if s]
    return max(slots) if slots else None


def _image(generation: int, offset: int, records: int, nbytes: int) -> bytes:
    slot = _pack(generation, offset, records, nbytes).ljust(SLOT_STRIDE, b"\0")
    empty = b"\0" * SLOT_STRIDE
    return slot + empty if generation % 2 == 0 else empty + slot


def create_checkpoint(segment: Path, sync: bool = True) -> None:
    """Allocate the segment's checkpoint at full size (offset 0); the only write that needs space."""
    cp = checkpoint_path(segment)
    fd = os.open(cp, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o644)
    try:
        data = _image(0, 0, 0, 0)
        written = os.pwrite(fd, data, 0)
        if written != len(data):
            raise OSError(f"short write of {cp.name} ({written} of {len(data)} bytes)")
        if sync:
            os.fdatasync(fd)
    except BaseException:
        os.close(fd)
        fd = -1
        cp.unlink(missing_ok=True)
        raise
    finally:
        if fd >= 0:
            os.close(fd)


def read_checkpoint_full(segment: Path) -> tuple[int, int, int]:
    """(byte offset replayed so far, corrupt spans seen before it, their bytes)."""
    try:
        data = checkpoint_path(segment).read_bytes()
    except FileNotFoundError:
        return 0, 0, 0
    best = _best(data)
    if best is not None:
        return best[1], best[2], best[3]
    try:  # the text format of older versions
        nums = [int(x) for x in data.decode("ascii").split()[:3]] + [0, 0, 0]
        return nums[0], nums[1], nums[2]
    except ValueError:
        return 0, 0, 0  # unreadable: replay from the start, which only re-sends


def write_checkpoint_full(segment: Path, offset: int, corrupt_records: int = 0, corrupt_bytes: int = 0,
                          sync: bool = True) -> None:
    """Record the replay position in place. Raises OSError when it cannot (the caller goes on)."""
    cp = checkpoint_path(segment)
    try:
        fd = os.open(cp, os.O_RDWR)
    except FileNotFoundError:
        # A segment of an older version, or a crash between creating a segment and its
        # checkpoint: the one case that needs space.
        create_checkpoint(segment, sync=False)
        fd = os.open(cp, os.O_RDWR)
    try:
        current = os.pread(fd, CHECKPOINT_BYTES, 0)
        if len(current) < CHECKPOINT_BYTES:
            # Old text format (or a file cut short): rewrite it whole. It stays within the
            # file's first block, which it already owns.
            data, at = _image(0, offset, corrupt_records, corrupt_bytes), 0
        else:
            best = _best(current)
            generation = best[0] + 1 if best is not None else 0
            data = _pack(generation, offset, corrupt_records, corrupt_bytes)
            at = (generation % 2) * SLOT_STRIDE
        written = os.pwrite(fd, data, at)
        if written != len(data):
            raise OSError(f"short write of {cp.name} ({written} of {len(data)} bytes)")
        if sync:
            os.fdatasync(fd)
    finally:
        os.close(fd)
