"""Readings in flight per worker: the bound on the memory ingest requests may hold at once.

A request's memory grows with its readings (measured: one 7.5 MB body of 344,000 readings
took a worker from 48 to 301 MiB, ~0.75 KiB a reading while it is parsed, checked and
waited on; eight at once reached 951 MiB). So each request holds a share of
MAX_READINGS_IN_FLIGHT from before its body is read until its answer is sent:

  1. from its Content-Length, before the body is read: BYTES_PER_READING bytes a reading;
  2. from the decompressed size, before it is parsed (a gzip body is larger than its length);
  3. the exact count once parsed (usually less than the estimate, which frees room).

A share that does not fit is refused with 503 + Retry-After at that step. A request is
always admitted when it is the only one in flight, so a body that alone is over the bound
can still be sent (it is bounded by MAX_BODY_BYTES / MAX_DECOMPRESSED_BYTES). So a worker's
ingest memory is bounded by about max(MAX_READINGS_IN_FLIGHT, one largest body) readings.
Readings of a request that timed out (503) may stay in the buffer until written; those are
bounded by BUFFER_MAX_READINGS.
"""

from __future__ import annotations

import threading
from typing import Any

from flask import Flask, current_app, g

# 7.5 MB held 344,000 readings (21.8 bytes each) in the body; raw lines of short
# names run ~10-15. A lower figure refuses some bodies that would fit; a higher one lets
# more bodies reach the parser, whose count (step 3) then still enforces the bound.
BYTES_PER_READING = 20
RETRY_AFTER_S = 2


class InFlight:
    """Shares of a per-worker budget of readings, one per request."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._held = 0
        self._lock = threading.Lock()
        self.peak = 0
        self.refused = 0

    def hold(self, current: int, readings: int) -> bool:
        """Change a request's share from `current` to `readings`; False (unchanged) if it does not fit."""
        readings = max(1, readings)
        with self._lock:
            others = self._held - current
            if readings > current and others > 0 and others + readings > self.limit:
                self.refused += 1
                return False
            self._held = others + readings
            self.peak = max(self.peak, self._held)
            return True

    def release(self, current: int) -> None:
        with self._lock:
            self._held -= current

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {"readings_in_flight": self._held, "max_readings_in_flight": self.limit,
                    "peak_readings_in_flight": self.peak, "refused_requests": self.refused}


def install(app: Flask, limit: int) -> InFlight:
    """One budget per worker (app); a request's share is given back when its request ends."""
    bound = InFlight(limit)
    app.extensions["admission"] = bound

    @app.teardown_request
    def _release(_exc: BaseException | None) -> None:
        held = g.pop("_readings_in_flight", 0)
        if held:
            bound.release(held)

    return bound


def reserve(readings: int) -> str | None:
    """Hold `readings` for the current request; the reason when they do not fit, else None."""
    bound: InFlight | None = current_app.extensions.get("admission")
    if bound is None or bound.limit <= 0:
        return None
    current = g.get("_readings_in_flight", 0)
    if not bound.hold(current, readings):
        return (f"this worker is busy with {bound.status()['readings_in_flight']} readings in flight and this body"
                f" holds about {readings} more; at most MAX_READINGS_IN_FLIGHT={bound.limit}; not stored, retry later")
    g._readings_in_flight = max(1, readings)
    return None


def estimate(nbytes: int) -> int:
    return nbytes // BYTES_PER_READING + 1
