"""Fan-out of committed readings to the open streams of this process, never blocking on one.

The feed hands each batch of new `stream_events` rows to `Hub.dispatch` on the event loop.
Subscribers with the same filter share one encoded chunk (built once per batch), and each
subscriber has a bounded queue (STREAM_QUEUE_EVENTS events): a subscriber that does not
read fills its own queue, the events beyond it are dropped and counted, and the count is
sent as `event: missed` where the gap is. Dispatch never waits for a socket, so a slow
subscriber delays neither the others nor (in another process entirely) the writer.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from backend.live.frames import StreamEvent, missed_frame

Filter = tuple[frozenset[str] | None, frozenset[str] | None]  # (devices, metrics); None = all
Listener = Callable[[list[StreamEvent]], None]


@dataclass(eq=False)
class Subscriber:
    devices: frozenset[str] | None
    metrics: frozenset[str] | None
    limit: int
    chunks: deque[tuple[bytes, int]] = field(default_factory=deque)
    queued: int = 0  # events in chunks
    missed: int = 0  # dropped since the last `missed` frame was queued
    missed_total: int = 0
    delivered: int = 0
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    # Writes a chunk to the client's socket at once if it can take it now (the fast path:
    # no coroutine switch per subscriber); None or False: queue it for the subscriber's pump.
    sink: Callable[[bytes], bool] | None = None
    beat: bool = False  # a heartbeat is due
    idle: bool = True  # nothing was queued since the last heartbeat round

    @property
    def key(self) -> Filter:
        return (self.devices, self.metrics)

    def offer(self, chunk: bytes, n: int) -> None:
        # An empty queue takes any chunk (one commit's matches), so the bound is the limit
        # plus at most one commit, and a commit larger than the limit still gets through.
        if self.queued and self.queued + n > self.limit:
            self.missed += n
            self.missed_total += n
            self.wake.set()
            return
        if not self.chunks and not self.missed and self.sink is not None and self.sink(chunk):
            self.delivered += n
            self.idle = False
            return
        if self.missed:
            self.chunks.append((missed_frame(self.missed), 0))
            self.missed = 0
        self.chunks.append((chunk, n))
        self.queued += n
        self.idle = False
        self.wake.set()

    def take(self) -> list[bytes]:
        """Everything queued, and the `missed` frame for drops since (the gap is at the end)."""
        out = [c for c, _ in self.chunks]
        self.chunks.clear()
        self.delivered += self.queued
        self.queued = 0
        if self.missed:
            out.append(missed_frame(self.missed))
            self.missed = 0
        self.wake.clear()
        return out


class Hub:
    def __init__(self, queue_events: int, on_count: Callable[[int], None] | None = None) -> None:
        self.queue_events = queue_events
        self._on_count = on_count  # told the number of open subscribers when it changes (/metrics)
        self.cursor = 0  # the last stream_events row id dispatched
        self._groups: dict[Filter, set[Subscriber]] = defaultdict(set)
        self._by_device: dict[str, set[Filter]] = defaultdict(set)  # device -> filters naming it
        self._listeners: list[Listener] = []
        self.dispatched_events = 0

    @property
    def count(self) -> int:
        return sum(len(s) for s in self._groups.values())

    def subscribers(self) -> list[Subscriber]:
        return [sub for group in self._groups.values() for sub in group]

    def missed_total(self) -> int:
        """Events dropped for the open subscribers (each one is told with `event: missed`)."""
        return sum(sub.missed_total for group in self._groups.values() for sub in group)

    def subscribe(self, devices: frozenset[str] | None, metrics: frozenset[str] | None) -> Subscriber:
        sub = Subscriber(devices, metrics, self.queue_events)
        group = self._groups[sub.key]
        if not group and devices is not None:
            for d in devices:
                self._by_device[d].add(sub.key)
        group.add(sub)
        self._counted()
        return sub

    def _counted(self) -> None:
        if self._on_count is not None:
            self._on_count(self.count)

    def unsubscribe(self, sub: Subscriber) -> None:
        group = self._groups.get(sub.key)
        if group is None:
            return
        group.discard(sub)
        self._counted()
        if not group:
            del self._groups[sub.key]
            for d in sub.devices or ():
                keys = self._by_device[d]
                keys.discard(sub.key)
                if not keys:
                    del self._by_device[d]

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def dispatch(self, last_row_id: int, events: list[StreamEvent]) -> None:
        """Offer `events` (rows up to `last_row_id`, in id order) to every matching subscriber.

        One pass over the events, looking up the filters that name each one's device: the
        cost follows the matches, not events x subscribers (500 dashboards of one device each
        cost about what one does). Each filter's chunk is encoded once for all its subscribers.
        """
        self.cursor = max(self.cursor, last_row_id)
        if not events:
            return
        self.dispatched_events += len(events)
        selected: dict[Filter, list[StreamEvent]] = {}
        by_device = self._by_device
        if by_device:
            for e in events:
                keys = by_device.get(e.device_id)
                if keys:
                    for key in keys:
                        if key[1] is None or e.metric in key[1]:
                            selected.setdefault(key, []).append(e)
        everything: bytes | None = None
        for key, subs in list(self._groups.items()):
            devices, metrics = key
            if devices is not None:
                sel = selected.get(key)
                if not sel:
                    continue
                chunk = b"".join(e.frame for e in sel)
            elif metrics is None:
                sel = events
                everything = everything or b"".join(e.frame for e in events)
                chunk = everything
            else:
                sel = [e for e in events if e.metric in metrics]
                if not sel:
                    continue
                chunk = b"".join(e.frame for e in sel)
            for sub in subs:
                sub.offer(chunk, len(sel))
        for listener in self._listeners:
            listener(events)
