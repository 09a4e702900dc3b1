"""JSON responses via orjson (faster than the stdlib on the hot path)."""

from __future__ import annotations

import functools
import logging
from datetime import UTC, datetime
from typing import Any

import orjson
import psycopg
from flask import Response, request

from backend.api.request_id import current_request_id

log = logging.getLogger(__name__)

def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status=status, headers=headers, mimetype="application/json")


def error_response(status: int, message: str, retry_after: int | None = None, reason: str | None = None,
                   **extra: Any) -> Response:
    """`message` is shown to the client as is: never put database error text in it (log that)."""
    headers = {"Retry-After": str(retry_after)} if retry_after else None
    body: dict[str, Any] = {"success": False, "error": message, "status": status, "timestamp": now_iso()}
    if reason is not None:
        body["reason"] = reason  # a stable code for programs; `error` is for people
    rid = current_request_id()
    if rid is not None:
        body["request_id"] = rid
    body.update(extra)
    return json_response(body, status, headers)


def now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


@functools.cache
def body_read_errors() -> tuple[type[BaseException], ...]:
    """What reading a request body raises when the client sent a broken one.

    gunicorn decodes `Transfer-Encoding: chunked` itself and raises its parse errors from
    inside `request.get_data()` (a size line `zz`, a missing CRLF); a body that ends early
    is an OSError (gunicorn's NoMoreData, werkzeug's dechunker). Imported lazily: other
    servers (the test client, werkzeug's) have no gunicorn.
    """
    try:
        from gunicorn.http.errors import ParseException
    except ImportError:
        return (OSError,)
    return (OSError, ParseException)


def body_error_text(exc: BaseException) -> str:
    chunked = "chunked" in (request.headers.get("Transfer-Encoding") or "").lower()
    what = "malformed chunked transfer encoding" if chunked else "could not be read"
    return f"body: {what} ({str(exc)[:120]}); nothing was stored"


def unexpected_error_response(exc: BaseException) -> tuple[Response, bool]:
    """The answer to an exception no view handled, and whether it is a server bug to log.

    The text fits the request: a failed read says nothing was changed rather than that
    "the request was not stored".
    """
    if isinstance(exc, body_read_errors()):
        return error_response(400, body_error_text(exc)), False
    reading = request.method in ("GET", "HEAD", "OPTIONS")
    if isinstance(exc, psycopg.OperationalError):  # database unreachable, restarting, pool exhausted
        # The client learns neither host nor user: the detail goes to the log, under the request id.
        log.warning("request %s: database unavailable: %s", current_request_id(), exc)
        text = "nothing was read" if reading else "the request was not stored"
        return error_response(503, f"database unavailable; {text}, retry later", retry_after=5,
                              reason="database_unavailable"), False
    text = "the read failed; nothing was changed" if reading else "the request was not stored"
    return error_response(500, f"internal error; {text}"), True
