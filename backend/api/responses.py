"""JSON responses via orjson (faster than the stdlib on the hot path)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
from flask import Response


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status=status, headers=headers, mimetype="application/json")


def error_response(status: int, message: str, retry_after: int | None = None, **extra: Any) -> Response:
    headers = {"Retry-After": str(retry_after)} if retry_after else None
    body = {"success": False, "error": message, "status": status, "timestamp": now_iso(), **extra}
    return json_response(body, status, headers)


def now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")
