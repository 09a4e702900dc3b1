"""POST /api/stream/token: a short-lived stream token for a key with `read` scope.

The stream itself is served by the stream process (backend/live/server.py, STREAM_PORT), at
the `stream_url` this answers; behind nginx, /api/stream is routed there (docs/stream.md).
"""

from __future__ import annotations

from urllib.parse import urlsplit

import psycopg
from flask import Blueprint, Response, request

from backend.api.responses import error_response, json_response
from backend.fleet.auth.hooks import request_identity, requires
from backend.live.wiring import stream_access

bp = Blueprint("stream", __name__)


def stream_url() -> str:
    cfg = stream_access().config
    if cfg.stream_public_url:
        return cfg.stream_public_url
    host = urlsplit(f"//{request.host}").hostname or "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"{request.scheme}://{host}:{cfg.stream_port}/api/stream"


@bp.post("/api/stream/token")
@requires("read")
def token() -> Response:
    ident = request_identity()
    if ident is None:
        return error_response(401, "an API key with read scope is needed")
    access = stream_access()
    try:
        tokens = access.tokens.get()
    except (psycopg.Error, RuntimeError) as exc:
        return error_response(503, f"cannot issue stream tokens right now ({type(exc).__name__}); retry later",
                              retry_after=5, reason="stream_unavailable")
    return json_response({"token": tokens.issue(ident.key_id), "expires_in": tokens.ttl_s,
                          "stream_url": stream_url()})
