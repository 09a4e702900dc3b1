"""`GET /metrics`: Prometheus text for the whole instance (every gunicorn worker added up).

Readable with a key of `read` scope, or without a key from the addresses in METRICS_ALLOW
(CIDRs, for a Prometheus that scrapes without credentials). Anyone else gets 401/403.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from flask import Blueprint, Response, request
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from backend.api.params import accepts
from backend.api.responses import error_response
from backend.fleet.auth import PUBLIC, requires
from backend.ops import multiproc
from backend.services import services

bp = Blueprint("metrics", __name__)


def address_allowed(address: str | None, networks: list[str]) -> bool:
    if not address or not networks:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in ipaddress.ip_network(n, strict=False) for n in networks)


def _refusal() -> Response | None:
    """None when this request may read the metrics; else the answer that says why not."""
    from backend.fleet.auth.hooks import authenticate

    svc = services()
    if not svc.config.auth_required or address_allowed(request.remote_addr, svc.config.metrics_allow):
        return None
    ident, state = authenticate(svc.fleet.keys, request)
    if ident is None:
        if state == "unavailable":
            return error_response(503, "cannot check the API key right now (database unreachable);"
                                  " retry later", retry_after=5, reason="auth_unavailable")
        resp = error_response(401, "/metrics needs an API key with the 'read' scope (Authorization: Bearer"
                              " <key> or X-API-Key), or an address in METRICS_ALLOW")
        resp.headers["WWW-Authenticate"] = 'Bearer realm="telemetry"'
        return resp
    if not ident.allows("read"):
        return error_response(403, "/metrics needs an API key with the 'read' scope")
    return None


def render() -> bytes:
    """The exposition: all workers' files under gunicorn, else this process's own registry."""
    root = multiproc.directory()
    if root is None:
        return generate_latest(services().ops.metrics.registry)
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(root))
    return generate_latest(registry)


@bp.get("/metrics")
@requires(PUBLIC)  # checked here: a key, or an allowed address
@accepts()
def metrics(_p: dict[str, Any]) -> Response:
    if (refused := _refusal()) is not None:
        return refused
    return Response(render(), mimetype=None, content_type=CONTENT_TYPE_LATEST)
