"""`/health` for operators and load balancers: is the database reachable, how is the buffer."""

from __future__ import annotations

from flask import Blueprint, Response

from ..services import services
from ..sinks import TransientSinkError
from .responses import json_response, now_iso

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
    body = {
        "status": "healthy" if connected else "unhealthy",
        "timestamp": now_iso(),
        "database_connected": connected,
        "supabase_connected": connected,  # the seed's name for the same fact
        "batch_status": batch,
    }
    spool = svc.extras.get("spool")
    if spool is not None:
        body["spool"] = spool.status()
    if reason:
        body["reason"] = reason
    return json_response(body, 200 if connected else 503)
