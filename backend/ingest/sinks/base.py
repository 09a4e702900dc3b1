"""The storage sink plugin interface: a batch of submissions in, a write result out.

A sink either stores the whole batch (and returns how much was new) or raises. Raising
`TransientSinkError` (or psycopg.OperationalError) means "try again later"; anything else
means the data itself was refused and retrying the same batch will not help.
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from backend.ingest.parsing import ParseError, Reading


class TransientSinkError(RuntimeError):
    """The sink is unreachable or overloaded; the same write may succeed later."""


@dataclass(slots=True)
class Submission:
    """What one request handed to the buffer, and how its write ended."""

    request_id: uuid.UUID
    readings: list[Reading]
    received_at: datetime
    raw_payload: str | None = None
    content_type: str | None = None
    device_id: str | None = None
    parser_version: str = ""
    data_source: str = ""
    rejected: list[ParseError] = field(default_factory=list)
    # True when the worker's field catalogue confirmed every reading's type, so the sink
    # can skip its own type check (spooled and replayed submissions are never "typed").
    typed: bool = False
    # Parallel to `readings` (empty when unknown, e.g. replayed from the spool): the message
    # position each reading came from, and whether the server assigned its time. A
    # server-timed reading is never a re-send of another request's reading: when its time
    # is taken, the sink moves it to the next free microsecond instead of dropping it.
    positions: list[int] = field(default_factory=list)
    server_timed: list[bool] = field(default_factory=list)
    # Filled in when the write ends; `done` releases the waiting request.
    done: threading.Event = field(default_factory=threading.Event)
    outcome: str = "pending"  # committed | spooled | failed
    inserted: int | None = None
    duplicates: int | None = None
    quarantined: int = 0
    # Readings refused because another value is stored for their (device, metric, ts):
    # (index into `readings`, reason). They are also counted in `quarantined`.
    conflicts: list[tuple[int, str]] = field(default_factory=list)
    error: str | None = None

    def committed(self, result: WriteResult) -> None:
        """The transaction carrying this submission committed: take its counts, wake the request."""
        ins, quar = result.per_request.get(self.request_id, (None, 0))
        self.inserted = ins
        self.quarantined = quar
        self.conflicts = result.conflicts.get(self.request_id, [])
        self.duplicates = None if ins is None else len(self.readings) - ins - quar
        self.finish("committed")

    def finish(self, outcome: str, error: str | None = None) -> None:
        self.outcome = outcome
        self.error = error
        self.done.set()


@dataclass(slots=True)
class WriteResult:
    staged: int = 0
    inserted: int = 0
    quarantined: int = 0
    # per request_id: (inserted, quarantined); only sinks that can tell fill this in.
    # Quarantined counts conflicts too: both went to quarantine, and neither is a duplicate.
    per_request: dict[uuid.UUID, tuple[int, int]] = field(default_factory=dict)
    # per request_id: [(index into the submission's readings, reason)] of its conflicts
    conflicts: dict[uuid.UUID, list[tuple[int, str]]] = field(default_factory=dict)
    # how the sink wrote it (the PostgreSQL sink: "copy" or "insert"); shown in the batch status
    method: str = ""
    # seconds the write took, retries included (set by the buffer for live flushes; 0 = not timed)
    write_seconds: float = 0.0

    @property
    def duplicates(self) -> int:
        return self.staged - self.inserted - self.quarantined


class Sink(Protocol):
    name: str

    def write(self, batch: list[Submission]) -> WriteResult: ...

    def ping(self) -> None:
        """Raise if the sink cannot be reached."""

    def close(self) -> None: ...
