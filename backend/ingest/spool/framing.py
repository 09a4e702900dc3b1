"""Spool record framing and batch encoding: bytes on disk <-> submissions.

A record is `b"SPL1"`, payload length (u32 LE), CRC32 of length and payload (u32 LE), then
the payload (orjson: every submission with its readings, original measurement times,
original received_at, request id, raw payload and rejected lines). The reader delivers
every record whose CRC matches and resynchronises on the next valid header after a bad span.
"""

from __future__ import annotations

import struct
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

import orjson

from backend.ingest.parsing import ParseError, Reading
from backend.ingest.sinks import Submission

MAGIC = b"SPL1"
HEADER = struct.Struct("<4sII")  # magic, payload length, crc32(length || payload)
_LEN = struct.Struct("<I")
MAX_RECORD_BYTES = 512 * 1024 * 1024


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
