"""`/health` for operators and load balancers: is the database reachable, how is the buffer."""

from __future__ import annotations

from flask import Blueprint, Response

from backend.api.responses import json_response, now_iso
from backend.ingest.sinks import TransientSinkError
from backend.services import services

bp = Blueprint("health", __name__)


@bp.get("/health")
def health() -> Response:
    svc = services()
    reason = None
    if not svc.buffer.sink_available():  # circuit open: answer at once, the probe watches the database
        connected = False
        reason = f"database unreachable: {svc.buffer.circuit_status()['reason']}"[:300]
    else:
        try:
            svc.buffer.sink.ping()
            connected = True
        except TransientSinkError as exc:
            connected = False
            reason = f"database unreachable: {exc}"[:300]
            svc.buffer.report_sink_failure(f"health check: {exc}")
    batch = svc.buffer.status()
    batch["supabase_healthy"] = connected
    spool = svc.extras.get("spool")
    spool_status = spool.status() if spool is not None else None
    age = max(batch["oldest_pending_age_s"], spool_status["oldest_unflushed_age_s"] if spool_status else 0.0)
    limit = svc.config.health_max_unflushed_age
    status = "healthy" if connected else "unhealthy"
    if connected and 0 < limit < age:
        # The database answers, yet acknowledged readings are not reaching it (a stuck or
        # slow replay, a full disk): an operator must hear of it. Still 200: this instance
        # takes and keeps data, and a balancer that dropped it would not drain the backlog.
        status = "degraded"
        reason = (f"acknowledged readings are not reaching the database: the oldest unflushed one is"
                  f" {age:.0f}s old (HEALTH_MAX_UNFLUSHED_AGE={limit:g})")
    body = {
        "status": status,
        "timestamp": now_iso(),
        "database_connected": connected,
        "supabase_connected": connected,  # the seed's name for the same fact
        "oldest_unflushed_age_s": age,
        "max_unflushed_age_s": limit,
        "batch_status": batch,
    }
    if spool_status is not None:
        body["spool"] = spool_status
    if reason:
        body["reason"] = reason
    return json_response(body, 200 if connected else 503)
