"""The circuit breaker in front of the database: open while it is known to be unreachable.

Whoever finds the database unreachable (the flusher after its retries, the replayer, the
health check, the catalogue) opens the circuit. From then on the write path does not touch
the database: batches go to the spool, requests that cannot be spooled are refused at once.
A probe thread pings the database with exponential backoff, equal jitter and a cap
(RETRY_BASE_DELAY, RETRY_MAX_DELAY, tenacity's strategies); the first successful ping
closes the circuit. The last outages and their probes are kept for /health.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from backend.ingest.backoff import delay, delay_top, equal_jitter
from backend.ingest.deadline import DeadlineRunner

log = logging.getLogger(__name__)

# Called with the new state (True: open) outside the circuit's lock.
CircuitListener = Callable[[bool], None]


def _iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


class CircuitBreaker:
    def __init__(self, ping: Callable[[], None], runner: DeadlineRunner, *, base_delay: float = 0.2,
                 max_delay: float = 30.0, probe_timeout: float = 5.0) -> None:
        self._ping = ping
        self._runner = runner
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.probe_timeout = probe_timeout
        self._wait = equal_jitter(base_delay, max_delay)
        self._cond = threading.Condition()
        self._listeners: tuple[CircuitListener, ...] = ()
        self._open = False
        self._reason = ""
        self._opened_at: datetime | None = None
        self._opened_mono = 0.0
        self._probe_attempt = 0
        self._next_probe_mono = 0.0
        self._outages: deque[dict[str, Any]] = deque(maxlen=5)
        self._stopping = False
        self._thread: threading.Thread | None = None

    def subscribe(self, listener: CircuitListener) -> None:
        """Be told when the circuit opens or closes (the buffer wakes its flusher)."""
        with self._cond:
            self._listeners = (*self._listeners, listener)

    # ---- state ---------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self._open

    @property
    def reason(self) -> str:
        return self._reason

    def open(self, reason: str) -> None:
        """The database was found unreachable: stop using it until a probe succeeds."""
        with self._cond:
            self._reason = reason[:300]
            if self._open:
                return
            self._open = True
            self._opened_at = datetime.now(UTC)
            self._opened_mono = time.monotonic()
            self._probe_attempt = 0
            self._next_probe_mono = self._opened_mono + delay_top(self.base_delay, self.max_delay, 0)
            self._outages.append({"opened_at": _iso(self._opened_at), "closed_at": None,
                                  "reason": self._reason, "probes": deque(maxlen=200)})
            self._cond.notify_all()
        log.warning("database unreachable (%s): circuit open, new batches go to the spool; probing in the"
                    " background", reason[:200])
        self._tell(True)

    def _close(self) -> None:
        with self._cond:
            if not self._open:
                return
            self._open = False
            self._reason = ""
            if self._outages:
                self._outages[-1]["closed_at"] = _iso(datetime.now(UTC))
            self._cond.notify_all()
        log.warning("database reachable again after %.1fs: circuit closed", time.monotonic() - self._opened_mono)
        self._tell(False)

    def _tell(self, is_open: bool) -> None:
        for listener in self._listeners:
            try:
                listener(is_open)
            except Exception:  # noqa: BLE001 - one listener must not keep the others uninformed
                log.exception("circuit listener %r failed", listener)

    def wait_closed(self, timeout: float) -> bool:
        """Wait up to `timeout` for the circuit to be closed; True when it is."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._open or self._stopping, timeout=timeout) and not self._open

    def retry_after_hint(self) -> int:
        """Seconds a refused client should wait: until the next probe while the circuit is open."""
        if self._open:
            return int(max(1, min(60, round(self._next_probe_mono - time.monotonic() + 1))))
        return 2

    def status(self) -> dict[str, Any]:
        with self._cond:
            return {
                "state": "open" if self._open else "closed",
                "reason": self._reason or None,
                "open_since": _iso(self._opened_at) if self._open and self._opened_at else None,
                "probe_attempt": self._probe_attempt if self._open else 0,
                "next_probe_in_s": round(max(0.0, self._next_probe_mono - time.monotonic()), 3)
                if self._open else None,
                "probe_base_s": self.base_delay,
                "probe_cap_s": self.max_delay,
                "outages": [dict(o, probes=list(o["probes"])) for o in self._outages],
            }

    # ---- the probe thread ------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._probe_loop, name="sink-probe", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 1.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def _probe_loop(self) -> None:
        # A worker that boots during an outage learns it at once, not from its first request.
        try:
            self._runner.run(self._ping, timeout=self.probe_timeout)
        except Exception as exc:  # noqa: BLE001 - any failure means "down"
            self.open(f"start-up check: {exc}")
        last_probe_mono: float | None = None
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._open or self._stopping)
                if self._stopping:
                    return
                attempt = self._probe_attempt
                if attempt == 0:
                    last_probe_mono = self._opened_mono
                wait_s = delay(self._wait, attempt)
                self._next_probe_mono = time.monotonic() + wait_s
                if self._cond.wait_for(lambda: self._stopping or not self._open, timeout=wait_s):
                    if self._stopping:
                        return
                    continue
            started = time.monotonic()
            try:
                self._runner.run(self._ping, timeout=self.probe_timeout)
                ok, error = True, None
            except Exception as exc:  # noqa: BLE001 - any failure means "still down"
                ok, error = False, str(exc)[:200]
            with self._cond:
                if self._outages:
                    self._outages[-1]["probes"].append({
                        "attempt": attempt,
                        "delay_s": round(wait_s, 4),
                        "delay_cap_s": round(delay_top(self.base_delay, self.max_delay, attempt), 4),
                        "gap_s": round(started - last_probe_mono, 4) if last_probe_mono is not None else None,
                        "ping_s": round(time.monotonic() - started, 4),
                        "ok": ok,
                        "error": error,
                    })
                last_probe_mono = started
                if not ok:
                    self._probe_attempt = attempt + 1
            if ok:
                self._close()
            else:
                log.info("probe %d failed (%s); next in <= %.2fs", attempt, error,
                         delay_top(self.base_delay, self.max_delay, attempt + 1))
