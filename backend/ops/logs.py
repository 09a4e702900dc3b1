"""JSON logs: the application's records and gunicorn's error and access logs, one object a line.

Every record carries `request_id` when it is written during a request (the id the client
sent in X-Request-Id, or the one made for it, backend/api/request_id.py). gunicorn's access
log line has the request's route, status, duration, device and key id (never the key),
read from the WSGI environ the app filled in (backend/ops/requests.py). LOG_FORMAT=text
keeps the plain lines.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from gunicorn import glogging
from pythonjsonlogger.json import JsonFormatter

from backend.ops.requests import DEVICE, KEY_ID, REQUEST_ID, ROUTE

FIELDS = "%(asctime)s %(levelname)s %(name)s %(message)s"
RENAMED = {"asctime": "time", "levelname": "level", "name": "logger"}
TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def json_formatter() -> logging.Formatter:
    return JsonFormatter(FIELDS, rename_fields=RENAMED, datefmt="%Y-%m-%dT%H:%M:%S%z")


class RequestIdFilter(logging.Filter):
    """Adds the current request's id to records written inside a request."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            from backend.api.request_id import current_request_id

            rid = current_request_id()
            if rid is not None:
                record.request_id = rid
        return True


def configure(level: str, fmt: str) -> None:
    """The root logger for the application's records (create_app, once per process)."""
    root = logging.getLogger()
    if any(getattr(h, "_telemetry", False) for h in root.handlers):
        root.setLevel(level)
        return
    if root.handlers and fmt != "json":
        return  # someone (pytest, an embedding program) configured logging already
    handler = logging.StreamHandler(sys.stderr)
    handler._telemetry = True  # type: ignore[attr-defined]
    handler.setFormatter(json_formatter() if fmt == "json" else logging.Formatter(TEXT))
    handler.addFilter(RequestIdFilter())
    root.addHandler(handler)
    root.setLevel(level)


class JsonGunicornLogger(glogging.Logger):
    """gunicorn's logger with JSON lines (gunicorn.conf.py `logger_class` when LOG_FORMAT=json)."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for log in (self.error_log, self.access_log):
            for handler in log.handlers:
                handler.setFormatter(json_formatter())

    def access(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> None:
        if not (self.cfg.accesslog or self.cfg.logconfig or self.cfg.logconfig_dict or self.cfg.syslog):
            return
        status = str(getattr(resp, "status", "") or "")
        headers = dict((k.lower(), v) for k, v in (getattr(resp, "headers", None) or []))
        fields = {
            "request_id": environ.get(REQUEST_ID) or headers.get("x-request-id"),
            "method": environ.get("REQUEST_METHOD"),
            "path": environ.get("PATH_INFO"),
            "route": environ.get(ROUTE),
            "status": int(status[:3]) if status[:3].isdigit() else None,
            "duration_ms": round(request_time.total_seconds() * 1000, 3),
            "bytes": getattr(resp, "sent", None),
            "remote_addr": environ.get("REMOTE_ADDR"),
            "user_agent": environ.get("HTTP_USER_AGENT"),
            "device_id": environ.get(DEVICE),
            "key_id": environ.get(KEY_ID),
        }
        try:
            self.access_log.info("request", extra=fields)
        except Exception:  # noqa: BLE001 - gunicorn's own rule: a log line never fails a request
            self.error("Failed to log the access line")
