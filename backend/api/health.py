"""`/health` for load balancers and operators: backend/ops/health.py decides the answer;
`?details=1` with a key of `read` scope adds what an operator needs (circuit, spool, errors).
"""

from __future__ import annotations

from flask import Blueprint, Response, request

from backend.api.responses import error_response, json_response
from backend.services import services

bp = Blueprint("health", __name__)


def _details_allowed() -> Response | None:
    """None when this request may see the details; else the 401/403 that says why not."""
    from backend.fleet.auth.hooks import authenticate

    svc = services()
    if not svc.config.auth_required:
        return None
    ident, state = authenticate(svc.fleet.keys, request)
    if ident is None:
        if state == "unavailable":
            return error_response(503, "cannot check the API key right now (database unreachable);"
                                  " retry later", retry_after=5)
        return error_response(401, "details=1 needs an API key with the 'read' scope"
                              " (Authorization: Bearer <key> or X-API-Key)")
    if not ident.allows("read"):
        return error_response(403, "details=1 needs an API key with the 'read' scope")
    return None


@bp.get("/health")
def health() -> Response:
    details = request.args.get("details", "").lower() in ("1", "true", "yes")
    if details and (refused := _details_allowed()) is not None:
        return refused
    body, code = services().health.answer(details)
    return json_response(body, code)
