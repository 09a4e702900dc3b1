"""Stream events as bytes on the wire: pure functions, no I/O.

An event id names one reading of one `stream_events` row: `row_id * ROW_SPAN + index`. Ids
grow in commit order (the row ids do, see migrations/0040_stream_events.sql), so a client's
`Last-Event-ID` says exactly where it stopped, down to the reading inside a flush.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import orjson

# Readings per stream_events row the id can address: far above FLUSH_MAX_READINGS and a
# COPY of the largest body (MAX_LINES_PER_BODY readings per request, flushed in pieces),
# and row_id * ROW_SPAN stays below 2**53 (JavaScript's exact integers) until row 9e9.
ROW_SPAN = 1_000_000

HEARTBEAT = b": heartbeat\n\n"


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """One committed reading, with its frame encoded once for every subscriber."""

    event_id: int
    device_id: str
    metric: str
    ts: str
    value: float | None
    text: str | None
    frame: bytes


def event_id(row_id: int, index: int) -> int:
    return row_id * ROW_SPAN + index


def split_event_id(eid: int) -> tuple[int, int]:
    """(row id, index in the row) of an event id."""
    return divmod(eid, ROW_SPAN)


def events_of_row(row_id: int, readings: list[list[object]]) -> list[StreamEvent]:
    """The events of one stream_events row: readings are [device_id, metric, ts, value, text]."""
    out = []
    for i, (device, metric, ts, value, text) in enumerate(readings):
        eid = event_id(row_id, i)
        data = orjson.dumps({"device_id": device, "metric": metric, "ts": ts, "value": value, "text": text})
        out.append(StreamEvent(eid, str(device), str(metric), str(ts),
                               None if value is None else float(value),  # type: ignore[arg-type]
                               None if text is None else str(text),
                               b"id: %d\nevent: reading\ndata: %s\n\n" % (eid, data)))
    return out


def missed_frame(missed: int | None, **extra: object) -> bytes:
    """`event: missed`: how many events this subscriber's full queue had to drop (never silent)."""
    return b"event: missed\ndata: %s\n\n" % orjson.dumps({"missed": missed, **extra})


def retry_frame(retry_ms: int) -> bytes:
    return b"retry: %d\n: connected\n\n" % retry_ms


def matches(ev: StreamEvent, devices: frozenset[str] | None, metrics: frozenset[str] | None) -> bool:
    return (devices is None or ev.device_id in devices) and (metrics is None or ev.metric in metrics)


def select(events: Iterable[StreamEvent], devices: frozenset[str] | None,
           metrics: frozenset[str] | None) -> list[StreamEvent]:
    return [ev for ev in events if matches(ev, devices, metrics)]
