"""Stream events as bytes on the wire: pure functions, no I/O.

An event id names one reading of one `stream_events` row: `row_id * ROW_SPAN + index`. Ids
grow in commit order (the row ids do, see migrations/0040_stream_events.sql), so a client's
`Last-Event-ID` says exactly where it stopped, down to the reading inside a flush.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

import orjson

# Readings per stream_events row the id can address: far above FLUSH_MAX_READINGS and a
# COPY of the largest body (MAX_LINES_PER_BODY readings per request, flushed in pieces),
# and row_id * ROW_SPAN stays below 2**53 (JavaScript's exact integers) until row 9e9.
ROW_SPAN = 1_000_000

HEARTBEAT = b": heartbeat\n\n"


class StreamEvent:
    """One committed reading; its frame is encoded on first use, once for every subscriber
    (most readings of a busy fleet match no open stream and are never encoded)."""

    __slots__ = ("event_id", "device_id", "metric", "ts", "value", "text", "_frame")

    def __init__(self, event_id: int, device_id: str, metric: str, ts: str, value: float | None,
                 text: str | None) -> None:
        self.event_id = event_id
        self.device_id = device_id
        self.metric = metric
        self.ts = utc_z(ts)
        self.value = value
        self.text = text
        self._frame: bytes | None = None

    @property
    def frame(self) -> bytes:
        if self._frame is None:
            self._frame = _frame(self.event_id, self.device_id, self.metric, self.ts, self.value, self.text)
        return self._frame


# An event's bytes: FRAME % (event id, data), data = orjson.dumps(data_of(...)). The hub's
# live path spells the same two steps out inline (a call per reading costs what encoding does).
FRAME = b"id: %d\nevent: reading\ndata: %s\n\n"


def _frame(eid: int, device: object, metric: object, ts_z: object, value: object, text: object) -> bytes:
    return FRAME % (eid, orjson.dumps({"device_id": device, "metric": metric, "ts": ts_z, "value": value,
                                       "text": text}))


def reading_frame(eid: int, reading: list[object]) -> bytes:
    """The frame of one reading of a row as the feed read it ([device_id, metric, ts, value,
    text]), without making a StreamEvent: the hub's live path encodes matched readings only."""
    device, metric, ts, value, text = reading
    return _frame(eid, device, metric, utc_z(ts), value, text)  # type: ignore[arg-type]


def utc_z(ts: str) -> str:
    """A timestamptz as jsonb wrote it (in the writer session's zone) -> UTC ending in Z."""
    if ts.endswith("+00:00"):
        return ts[:-6] + "Z"
    try:
        return datetime.fromisoformat(ts).astimezone(UTC).isoformat().replace("+00:00", "Z")
    except ValueError:
        return ts


def event_id(row_id: int, index: int) -> int:
    return row_id * ROW_SPAN + index


def split_event_id(eid: int) -> tuple[int, int]:
    """(row id, index in the row) of an event id."""
    return divmod(eid, ROW_SPAN)


def events_of_row(row_id: int, readings: list[list[object]]) -> list[StreamEvent]:
    """The events of one stream_events row: readings are [device_id, metric, ts, value, text]."""
    base = row_id * ROW_SPAN
    return [StreamEvent(base + i, device, metric, ts, value, text)  # type: ignore[arg-type]
            for i, (device, metric, ts, value, text) in enumerate(readings)]


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
