"""ThingsBoard's device HTTP API: `POST /api/v1/<token>/telemetry` and `/api/v1/<token>/attributes`.

The token is a device-bound API key (`python -m backend keys create --name boiler-1
--scopes ingest --devices boiler-1`), as a ThingsBoard device access token is bound to one
device. Unknown, revoked or expired token: 401; a key without the ingest scope, or bound
to no or several devices: 403; a body naming another device: 403, nothing stored.
Telemetry goes through the same pipeline as every other ingest endpoint (format
`thingsboard`); attributes are merged into the device's metadata (backend/fleet/attributes.py).

ThingsBoard puts the token in the URL; an access log in front of this service records
it, so keep such logs private or strip the path (docs/doors.md).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Response, current_app, request

from backend.api.ingest_http import REQUEST_ADMISSION, outcome_body, read_body, refusal_response
from backend.api.params import accepts
from backend.api.responses import error_response, json_response, now_iso
from backend.fleet.attributes import merge_attributes
from backend.fleet.auth import PUBLIC, guard_for, requires
from backend.fleet.auth.hooks import MAX_KEY_LEN
from backend.fleet.auth.keystore import AuthUnavailable, Identity, KeyStore
from backend.fleet.devices import DeviceError
from backend.ingest import pipeline
from backend.ingest.parsing.base import InvalidValue
from backend.ingest.parsing.thingsboard import parse_attributes
from backend.ingest.pipeline import IngestPipeline, IngestRefused, IngestRequest
from backend.services import services

bp = Blueprint("thingsboard", __name__)


def _device_of(token: str) -> tuple[Identity, str] | Response:
    """The key and its one device, or the error answer (401/403/503)."""
    store: KeyStore = current_app.extensions["fleet_keys"]
    try:
        ident = store.lookup(token) if len(token) <= MAX_KEY_LEN else None
    except AuthUnavailable:
        return error_response(503, "cannot check the access token right now (database unreachable); retry later",
                              retry_after=5, reason="auth_unavailable")
    if ident is None or not ident.usable(datetime.now(UTC)):
        return error_response(401, "unknown, expired or revoked device access token")
    if not ident.allows("ingest"):
        return error_response(403, "this access token does not have the 'ingest' scope")
    if ident.devices is None or len(ident.devices) != 1:
        return error_response(403, "this access token is not bound to exactly one device"
                                   " (create it with `keys create --devices <device id>`)")
    store.touch(ident)
    return ident, next(iter(ident.devices))


@bp.post("/api/v1/<token>/telemetry")
@requires(PUBLIC)  # the token in the path is the credential, checked here
@accepts()
def telemetry(_p: dict[str, Any], token: str) -> Response:
    found = _device_of(token)
    if isinstance(found, Response):
        return found
    ident, device = found
    svc = services()
    try:
        req = IngestRequest(body=read_body(svc.config), content_type=request.headers.get("Content-Type", ""),
                            content_encoding=request.headers.get("Content-Encoding", ""), default_device=device,
                            format="thingsboard", key_id=ident.key_id, device_guard=guard_for(ident),
                            admission=REQUEST_ADMISSION)
        outcome = IngestPipeline(svc.config, svc.buffer, svc.catalogue).run(req)
    except IngestRefused as exc:
        return refusal_response(exc)
    return json_response(outcome_body(outcome, True, svc.config.data_source), outcome.status)


@bp.post("/api/v1/<token>/attributes")
@requires(PUBLIC)
@accepts()
def attributes(_p: dict[str, Any], token: str) -> Response:
    found = _device_of(token)
    if isinstance(found, Response):
        return found
    _ident, device = found
    svc = services()
    try:
        body = read_body(svc.config).decode("utf-8")
        metadata = merge_attributes(svc.pool, device, parse_attributes(body))
    except IngestRefused as exc:
        return refusal_response(exc)
    except UnicodeDecodeError as exc:
        return error_response(400, f"body is not valid UTF-8 (byte {exc.start})", reason=pipeline.INVALID)
    except (InvalidValue, DeviceError) as exc:
        return error_response(400, str(exc), reason=pipeline.INVALID)
    return json_response({"success": True, "device_id": device, "metadata": metadata, "timestamp": now_iso()})
