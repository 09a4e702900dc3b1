"""JSON responses via orjson (faster than the stdlib on the hot path)."""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from typing import Any

import orjson
import psycopg
from flask import Response, request


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status=status, headers=headers, mimetype="application/json")


def error_response(status: int, message: str, retry_after: int | None = None, **extra: Any) -> Response:
    headers = {"Retry-After": str(retry_after)} if retry_after else None
    body = {"success": False, "error": message, "status": status, "timestamp": now_iso(), **extra}
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
        text = "nothing was read" if reading else "the request was not stored"
        return error_response(503, f"database unavailable; {text}, retry later", retry_after=5), False
    text = "the read failed; nothing was changed" if reading else "the request was not stored"
    return error_response(500, f"internal error; {text}"), True
