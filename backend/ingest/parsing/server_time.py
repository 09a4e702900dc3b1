"""Times the server assigns to messages that came without one.

The parsers give the k-th message of a device without a time in one body the time of
receipt + k µs (base.build_message). That keeps the lines of one body apart, but two
requests for one device arriving within the same microsecond (or a second body arriving
while the first one's microseconds are still ahead of the clock) would be given the same
times, and the later readings would look like re-sends. This per-process clock hands out
each microsecond at most once per device, so within one worker that cannot happen.

Across workers (other processes, other hosts) it still can; the sink resolves that case:
readings flagged as server-timed move forward to the next free microsecond when their
time is taken by another request (migrations/0013_write_conflicts.sql).

This is the one stateful piece of the parsing package; parsers do not call it, ingest does.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

from backend.ingest.parsing.base import Message

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)


class ServerClock:
    """Hands out microseconds per device, never the same one twice in this process."""

    def __init__(self, max_devices: int = 100_000) -> None:
        self._last: dict[str, int] = {}
        self._lock = threading.Lock()
        self.max_devices = max_devices

    def reserve(self, device_id: str, count: int, now_us: int) -> int:
        """First of `count` consecutive microseconds for `device_id`, none before `now_us`."""
        with self._lock:
            start = max(now_us, self._last.get(device_id, now_us - 1) + 1)
            self._last[device_id] = start + count - 1
            if len(self._last) > self.max_devices:
                # Entries in the past no longer constrain anything (a new request starts at
                # its own receipt time), so the map stays as small as the devices now active.
                self._last = {d: last for d, last in self._last.items() if last >= now_us}
            return start


_CLOCK = ServerClock()


def assign_server_times(messages: list[Message], received_at: datetime, clock: ServerClock | None = None) -> int:
    """Move server-timed messages onto microseconds this process has not given their device.

    Returns how many messages carry a server-assigned time. The common case (no request for
    the device in the last few microseconds) leaves the parser's times as they are.
    """
    counts: dict[str, int] = {}
    for m in messages:
        if m.server_time:
            device = m.readings[0].device_id
            counts[device] = counts.get(device, 0) + 1
    if not counts:
        return 0
    clock = clock or _CLOCK
    now_us = (received_at - _EPOCH) // _ONE_US
    offsets = {}
    for device, n in counts.items():
        offset = clock.reserve(device, n, now_us) - now_us
        if offset:
            offsets[device] = offset * _ONE_US
    if offsets:
        for m in messages:
            if m.server_time and (shift := offsets.get(m.readings[0].device_id)) is not None:
                m.readings = [r._replace(ts=r.ts + shift) for r in m.readings]
    return sum(counts.values())
