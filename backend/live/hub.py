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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import orjson

from backend.live.frames import FRAME, ROW_SPAN, StreamEvent, events_of_row, missed_frame, reading_frame, utc_z

Filter = tuple[frozenset[str] | None, frozenset[str] | None]  # (devices, metrics); None = all
Listener = Callable[[list[StreamEvent]], None]
Row = tuple[int, list[list[object]]]  # a stream_events row: id, [[device_id, metric, ts, value, text], ...]


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
        self._undevice = 0  # open filters without devices (they need every reading encoded)
        self._listeners: list[tuple[Listener, Callable[[], bool]]] = []
        self.dispatched_events = 0
        self.dispatches = 0  # reads that found new rows
        self.offers = 0  # chunks offered to subscribers: each a socket write or a queued chunk

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
        if not group:
            for d in devices or ():
                self._by_device[d].add(sub.key)
            self._undevice += devices is None
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
            self._undevice -= sub.devices is None
            for d in sub.devices or ():
                keys = self._by_device[d]
                keys.discard(sub.key)
                if not keys:
                    del self._by_device[d]

    def add_listener(self, listener: Listener, active: Callable[[], bool] | None = None) -> None:
        """`listener` gets every dispatched event (as StreamEvents, built only while `active()`)."""
        self._listeners.append((listener, active or (lambda: True)))

    def dispatch(self, rows: Sequence[Row]) -> None:
        """Offer the readings of `rows` (new stream_events rows, in id order) to every matching subscriber.

        One pass over the readings, looking up the filters that name each one's device: the
        cost follows the matches, not readings x subscribers (500 dashboards of one device each
        cost about what one does). Readings stay the lists the feed parsed: a reading no filter
        matches costs one dict lookup, a matched one is encoded once for every subscriber (no
        per-reading object: making one per reading was a quarter of this process's CPU at 500
        subscribers). Each filter's chunk is joined once for all its subscribers.
        """
        if not rows:
            return
        self.cursor = max(self.cursor, rows[-1][0])
        self.dispatched_events += sum(len(readings) for _, readings in rows)
        self.dispatches += 1
        selected: dict[Filter, list[bytes]] = {}
        by_device = self._by_device
        flat: list[tuple[object, object, bytes]] | None = None  # every reading, for filters without devices
        if self._undevice:
            flat = [(r[0], r[1], reading_frame(base + i, r))
                    for base, readings in ((row_id * ROW_SPAN, readings) for row_id, readings in rows)
                    for i, r in enumerate(readings)]
            if by_device:
                for device, metric, frame in flat:
                    keys = by_device.get(device)  # type: ignore[call-overload]
                    if keys:
                        for key in keys:
                            if key[1] is None or metric in key[1]:
                                selected.setdefault(key, []).append(frame)
        elif by_device:
            # The hot loop (every reading of every commit): encoding inlined, and each distinct
            # time converted once (the readings of one message share it).
            get, dumps, utc = by_device.get, orjson.dumps, {}  # type: ignore[var-annotated]
            for row_id, readings in rows:
                base = row_id * ROW_SPAN
                for i, r in enumerate(readings):
                    keys = get(r[0])  # type: ignore[call-overload]
                    if keys is None:
                        continue
                    frame = None
                    for key in keys:
                        if key[1] is None or r[1] in key[1]:
                            if frame is None:
                                device, metric, ts, value, text = r
                                z = utc.get(ts)
                                if z is None:
                                    z = utc[ts] = utc_z(ts)  # type: ignore[arg-type]
                                frame = FRAME % (base + i, dumps({"device_id": device, "metric": metric, "ts": z,
                                                                  "value": value, "text": text}))
                            sel = selected.get(key)
                            if sel is None:
                                selected[key] = [frame]
                            else:
                                sel.append(frame)
        everything: bytes | None = None
        for key, subs in list(self._groups.items()):
            devices, metrics = key
            if devices is not None:
                frames = selected.get(key)
            elif flat is None:
                continue  # not reached: flat is built whenever such a filter is open
            elif metrics is None:
                if not flat:
                    continue
                everything = everything or b"".join(f for _, _, f in flat)
                for sub in subs:
                    sub.offer(everything, len(flat))
                self.offers += len(subs)
                continue
            else:
                frames = [f for _, m, f in flat if m in metrics]
            if frames:
                chunk = b"".join(frames)
                for sub in subs:
                    sub.offer(chunk, len(frames))
                self.offers += len(subs)
        if any(active() for _, active in self._listeners):
            events = [e for row_id, readings in rows for e in events_of_row(row_id, readings)]
            for listener, active in self._listeners:
                if active():
                    listener(events)
