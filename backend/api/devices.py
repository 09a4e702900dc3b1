"""`/api/devices` (fleet status, latest values, metadata) and `/api/dashboard/summary`."""

from __future__ import annotations

from flask import Blueprint, Response, request

from ..fleet.auth import requires
from ..fleet.devices import DeviceError, get_device, list_devices, patch_device, summary
from ..query import QueryError, parse_int
from ..services import services
from .responses import error_response, json_response, now_iso

bp = Blueprint("devices", __name__)


@bp.get("/api/devices")
@requires("read")
def devices() -> Response:
    svc = services()
    try:
        limit = parse_int("limit", request.args.get("limit"), 10_000, 1, 100_000)
        offset = parse_int("offset", request.args.get("offset"), 0, 0, 10_000_000)
        data = list_devices(svc.pool, svc.config.device_offline_after_s, request.args.get("status"), limit, offset)
    except (DeviceError, QueryError) as exc:
        return error_response(400, str(exc))
    return json_response({"success": True, "data": data, "count": len(data),
                          "offline_after_s": svc.config.device_offline_after_s, "timestamp": now_iso()})


@bp.get("/api/devices/<device_id>")
@requires("read")
def device(device_id: str) -> Response:
    svc = services()
    found = get_device(svc.pool, device_id, svc.config.device_offline_after_s)
    if found is None:
        return error_response(404, f"no device {device_id[:80]!r}")
    return json_response({"success": True, "data": found, "timestamp": now_iso()})


@bp.patch("/api/devices/<device_id>")
@requires("admin")
def edit_device(device_id: str) -> Response:
    svc = services()
    body = request.get_json(silent=True)
    try:
        updated = patch_device(svc.pool, device_id, body, svc.config.device_offline_after_s)
    except DeviceError as exc:
        return error_response(400, str(exc))
    if updated is None:
        return error_response(404, f"no device {device_id[:80]!r} (devices appear when they first send data)")
    return json_response({"success": True, "data": updated, "timestamp": now_iso()})


@bp.get("/api/dashboard/summary")
@requires("read")
def dashboard_summary() -> Response:
    svc = services()
    data = summary(svc.pool, svc.config.device_offline_after_s)
    return json_response({"success": True, **data, "data": data, "timestamp": now_iso()})
