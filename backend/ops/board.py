"""Each worker's once-a-second publisher: gauge levels, sampled counters, and its status file.

One thread per worker. Each round it
- sets the level gauges (buffer depth, spool bytes and age, circuit state) from the worker's
  status: gauges of the multiprocess registry are per worker, and a scrape is answered by
  one worker, so each must write its own levels rather than compute them at scrape time;
- turns the fleet's own running totals (rate-limit refusals, alert evaluations, webhook
  deliveries) and the spool's replay total into counter increments (`CounterFeed`): those
  components already count, and reading their totals needs no hook inside them;
- writes the worker's whole status to `status/<pid>.json` (backend/ops/multiproc.py), from
  which any worker answers /telemetry/batch/status for the instance (backend/ops/status.py).

A committed write wakes the thread early (`poke`, a write observer), so the other workers'
figures in an instance status lag a flush by at most MIN_GAP_S (0.5 s), and an idle
worker's by at most `interval` (1 s).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import orjson

from backend.ingest.sinks import Submission, WriteResult
from backend.ops.metrics import CounterFeed, Metrics, circuit_level

log = logging.getLogger(__name__)

MIN_GAP_S = 0.5  # a round took ~4 ms on this loaded 2-core machine: at most ~1% of a core
# The fleet's running totals as board rounds read them: {"rate_limited": n, ...}.
Totals = Callable[[], Mapping[str, int]]


class InstanceBoard:
    def __init__(self, metrics: Metrics, worker_status: Callable[[], dict[str, Any]], fleet_totals: Totals,
                 status_dir: Path | None, interval: float = 1.0) -> None:
        self.metrics = metrics
        self.worker_status = worker_status
        self.fleet_totals = fleet_totals
        self.status_dir = status_dir
        self.interval = interval
        self.pid = os.getpid()
        self._feed = CounterFeed()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="ops-board", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stop the thread after one last round (the final totals of a worker that exits)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None

    def poke(self, _batch: list[Submission] | None = None, _result: WriteResult | None = None) -> None:
        """A write observer: publish soon, the instance status then shows this flush."""
        self._wake.set()

    def _loop(self) -> None:
        # The first round after one interval (or the first flush): a worker that just started
        # has nothing to show, and its status calls warm caches (the spool's usage) that a
        # request right after start-up should compute itself.
        self._wake.wait(self.interval)
        self._wake.clear()
        while True:
            try:
                self.round()
            except Exception:  # noqa: BLE001 - a failed round must not end the figures for good
                log.exception("ops board round failed")
            if self._stop.is_set():
                return
            # At most one round per MIN_GAP_S: under load a worker flushes tens of times a second,
            # and a round reads the spool directory; the pokes in between share the next round.
            self._stop.wait(MIN_GAP_S)
            self._wake.wait(self.interval)
            self._wake.clear()

    def round(self) -> dict[str, Any]:
        status = self.worker_status()
        m = self.metrics
        m.workers.set(1)
        m.buffer_depth.set(status.get("pending_records", 0))
        m.buffer_oldest.set(status.get("oldest_pending_age_s", 0.0))
        circuit = status.get("circuit") or {}
        level = circuit_level(str(circuit.get("state", "closed")))
        m.circuit_state.set(level)
        m.circuit_open_workers.set(1 if level else 0)
        self._feed.feed(m.spooled, status.get("spooled_total", 0))
        spool = status.get("spool")
        if spool:
            m.spool_bytes.set(spool.get("depth_bytes", 0))
            m.spool_oldest.set(spool.get("oldest_unflushed_age_s", 0.0))
            self._feed.feed(m.replayed, spool.get("replayed_readings_total", 0))
        totals = self.fleet_totals()
        self._feed.feed(m.rate_limited, totals.get("rate_limited", 0))
        self._feed.feed(m.alert_evaluations, totals.get("alert_evaluated", 0))
        self._feed.feed(m.alerts_opened, totals.get("alerts_opened", 0))
        self._feed.feed(m.webhooks_sent, totals.get("webhooks_sent", 0))
        self._feed.feed(m.webhook_failures, totals.get("webhooks_failed", 0))
        self._publish(status)
        return status

    def _publish(self, status: dict[str, Any]) -> None:
        if self.status_dir is None:
            return
        path = self.status_dir / f"{self.pid}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps({"pid": self.pid, "published_at": time.time(), "status": status}))
        os.replace(tmp, path)  # readers see the old file or the new one, never half of one
