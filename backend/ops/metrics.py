"""The service's Prometheus metrics: one `Metrics` object per worker, fed through typed hooks.

Nothing here patches another object. The write path's figures arrive through
`WriteObservers` (`on_written`), ingest outcomes through the pipeline's `IngestEvents`
hook (`ingested`, `refused`), requests through the WSGI middleware (backend/ops/requests.py),
and the levels (buffer depth, spool bytes, circuit state) and the fleet's own counters are
sampled once a second by backend/ops/board.py.

Under gunicorn every worker writes its values to PROMETHEUS_MULTIPROC_DIR
(backend/ops/multiproc.py) and `/metrics` adds them up across the instance's workers; each
gauge says how (`multiprocess_mode`): levels that each worker holds for itself are summed
over live workers, levels of things the workers share (the spool directory, a circuit that
any worker may have open) take the maximum.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from backend.ingest.sinks import Submission, WriteResult

# Seconds: from a cached answer (sub-ms) to ACK_TIMEOUT's default (10 s) and beyond.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Readings per flush: one reading up to FLUSH_MAX_READINGS' default (5,000) and beyond.
FLUSH_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 50000)
CIRCUIT_STATES = {"closed": 0, "half_open": 1, "half-open": 1, "open": 2}


class Metrics:
    """Every metric of the service, registered in `registry` (a fresh one per app by default)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        # --- HTTP
        self.requests = Counter("telemetry_http_requests", "HTTP requests answered, by route template,"
                                " method and status", ["route", "method", "status"], registry=r)
        self.request_seconds = Histogram("telemetry_http_request_duration_seconds", "Time from a request"
                                         " reaching the application to its answer, by route template",
                                         ["route", "method"], buckets=LATENCY_BUCKETS, registry=r)
        # --- ingest outcomes (the pipeline's IngestEvents hook)
        self.accepted = Counter("telemetry_readings_accepted", "Readings acknowledged as durable (committed"
                                " or spooled), by format and transport", ["format", "transport"], registry=r)
        self.rejected = Counter("telemetry_readings_rejected", "Readings refused within an accepted request"
                                " (parse, type or conflict errors), by format and transport",
                                ["format", "transport"], registry=r)
        self.duplicates = Counter("telemetry_readings_duplicate", "Readings already stored with the same"
                                  " value (not stored again), by format and transport",
                                  ["format", "transport"], registry=r)
        self.refused_requests = Counter("telemetry_ingest_requests_refused", "Ingest requests refused whole (nothing"
                               " stored), by reason and transport", ["reason", "transport"], registry=r)
        # --- write path (WriteObservers)
        self.flush_readings = Histogram("telemetry_flush_readings", "Readings per committed write",
                                        buckets=FLUSH_BUCKETS, registry=r)
        self.write_seconds = Histogram("telemetry_write_duration_seconds", "Time of one committed write to"
                                       " PostgreSQL, retries included", buckets=LATENCY_BUCKETS, registry=r)
        self.committed = Counter("telemetry_readings_committed", "Readings inserted into PostgreSQL by live"
                                 " writes and spool replays", registry=r)
        # --- levels, sampled each second (board.py)
        self.buffer_depth = Gauge("telemetry_buffer_pending_readings", "Readings buffered, not yet written",
                                  multiprocess_mode="livesum", registry=r)
        self.buffer_oldest = Gauge("telemetry_buffer_oldest_pending_age_seconds", "Age of the oldest"
                                   " buffered reading", multiprocess_mode="livemax", registry=r)
        self.spool_bytes = Gauge("telemetry_spool_bytes", "Bytes in the instance's spool (all worker"
                                 " directories)", multiprocess_mode="livemax", registry=r)
        self.spool_oldest = Gauge("telemetry_spool_oldest_unflushed_age_seconds", "Age of the oldest"
                                  " acknowledged reading not yet in PostgreSQL", multiprocess_mode="livemax",
                                  registry=r)
        self.circuit_state = Gauge("telemetry_circuit_state", "Database circuit: 0 closed, 1 half-open,"
                                   " 2 open (the most open of the live workers)", multiprocess_mode="livemax",
                                   registry=r)
        self.circuit_open_workers = Gauge("telemetry_circuit_open_workers", "Workers whose circuit is"
                                          " not closed", multiprocess_mode="livesum", registry=r)
        self.workers = Gauge("telemetry_workers", "Live workers of this instance", multiprocess_mode="livesum",
                             registry=r)
        self.spooled = Counter("telemetry_readings_spooled", "Readings written to the spool instead of"
                               " PostgreSQL", registry=r)
        self.replayed = Counter("telemetry_spool_replayed_readings", "Readings replayed from the spool into"
                                " PostgreSQL (rate() is the replay rate)", registry=r)
        # --- fleet
        self.rate_limited = Counter("telemetry_rate_limited_requests", "Requests refused with 429 by a rate"
                                    " limit", registry=r)
        self.alert_evaluations = Counter("telemetry_alert_evaluated_readings", "Readings evaluated against"
                                         " alert rules", registry=r)
        self.alerts_opened = Counter("telemetry_alerts_opened", "Alerts opened", registry=r)
        self.webhooks_sent = Counter("telemetry_alert_webhooks_sent", "Alert webhooks delivered", registry=r)
        self.webhook_failures = Counter("telemetry_alert_webhook_failures", "Alert webhooks given up after"
                                        " their retries", registry=r)
        # --- live stream (set by the stream's code)
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self.stream_subscribers = Gauge("telemetry_stream_subscribers", "Open live-stream subscriptions",
                                        multiprocess_mode="livesum", registry=r)

    # ---- WriteObservers ----

    def on_written(self, batch: list[Submission], result: WriteResult) -> None:
        """A committed write (live flush or replayed chunk): its size and time."""
        rows = sum(len(s.readings) for s in batch)
        self.flush_readings.observe(rows)
        if result.write_seconds > 0:
            self.write_seconds.observe(result.write_seconds)
        if result.inserted:
            self.committed.inc(result.inserted)

    # ---- IngestEvents (backend/ingest/pipeline.py) ----

    def ingested(self, fmt: str, transport: str, accepted: int, duplicates: int, rejected: int) -> None:
        if accepted:
            self.accepted.labels(fmt, transport).inc(accepted)
        if duplicates:
            self.duplicates.labels(fmt, transport).inc(duplicates)
        if rejected:
            self.rejected.labels(fmt, transport).inc(rejected)

    def refused(self, reason: str, transport: str) -> None:
        self.refused_requests.labels(reason, transport).inc()

    # ---- the request middleware ----

    def request(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        children = self._children.get(key)
        if children is None:
            # labels() costs as much as the increment itself (lock, tuple of str): once per key.
            # Bounded: route templates x methods x statuses the app answers.
            children = self._children[key] = (self.requests.labels(route, method, str(status)),
                                               self.request_seconds.labels(route, method))
        children[0].inc()
        children[1].observe(seconds)


class CounterFeed:
    """Turns a component's own running totals into counter increments (sampled, never reset)."""

    def __init__(self) -> None:
        self._last: dict[int, float] = {}

    def feed(self, counter: Counter, total: float) -> None:
        last = self._last.get(id(counter), 0.0)
        if total > last:
            counter.inc(total - last)
        self._last[id(counter)] = max(total, last)


def circuit_level(state: str) -> int:
    return CIRCUIT_STATES.get(state, 2)

