"""Per-request figures: the route template, status and time into the metrics, and the fields
the JSON access log shows (request id, device, key id) into the WSGI environ.

Flask's `after_request` knows the route, the key and the device, and writes them to the
environ; the WSGI middleware around the whole app (auth, rate limits and error handlers
included) times the request and counts it when the answer starts. gunicorn's access log
(backend/ops/logs.py) reads the same environ keys, so both say the same thing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from flask import Flask, Response, g, request

from backend.api.request_id import current_request_id

if TYPE_CHECKING:  # not imported at run time: gunicorn's master loads this module (see __init__)
    from backend.ops.metrics import Metrics

ROUTE = "telemetry.route"
KEY_ID = "telemetry.key_id"
DEVICE = "telemetry.device"
REQUEST_ID = "telemetry.request_id"
UNMATCHED = "unmatched"  # 404s: their paths are the client's, not a bounded label set

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class RequestMetrics:
    """WSGI middleware: one count and one latency observation per answered request."""

    def __init__(self, app: WsgiApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        started = time.perf_counter()
        seen: list[str] = []

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            seen.append(status)
            return start_response(status, headers, exc_info)

        try:
            return self.app(environ, start)
        finally:
            code = int(seen[-1][:3]) if seen else 500
            self.metrics.request(environ.get(ROUTE, UNMATCHED), environ.get("REQUEST_METHOD", "GET"), code,
                                 time.perf_counter() - started)


def note_device(device_id: str | None) -> None:
    """The device of this request's readings, for the access log (when no header or path names it)."""
    if device_id:
        request.environ.setdefault(DEVICE, device_id[:128])


def _note_request(resp: Response) -> Response:
    env = request.environ
    env[ROUTE] = request.url_rule.rule if request.url_rule is not None else UNMATCHED
    env[REQUEST_ID] = current_request_id()
    ident = g.get("fleet_identity")
    key_id = ident.key_id if ident is not None else g.get("fleet_key_id")
    if key_id:
        env[KEY_ID] = key_id  # the key's id, never the key
    device = (request.headers.get("X-Device-Id") or request.args.get("device_id")
              or (request.view_args or {}).get("device_id"))
    if device:
        env[DEVICE] = str(device)[:128]  # what the client named wins over the body's first device
    return resp


def install(app: Flask, metrics: Metrics) -> None:
    app.after_request(_note_request)
    app.wsgi_app = RequestMetrics(app.wsgi_app, metrics)  # type: ignore[method-assign]
