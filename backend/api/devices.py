"""`/api/devices` (fleet status, latest values, metadata) and `/api/dashboard/summary`."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, request

from backend.api.params import ParamError, accepts, check_text, choice, integer
from backend.api.responses import error_response, json_response, now_iso
from backend.fleet.auth import requires
from backend.fleet.devices import DeviceError, get_device, list_devices, patch_device, summary
from backend.ingest.parsing.base import MAX_DEVICE_ID_LEN
from backend.services import services

bp = Blueprint("devices", __name__)


def _path_device(device_id: str) -> str | None:
    """The error text for a device id in the path that no device can have, else None."""
    try:
        check_text("device_id", device_id, MAX_DEVICE_ID_LEN)
    except ParamError as exc:
        return str(exc)
    return None


@bp.get("/api/devices")
@requires("read")
@accepts(integer("limit", 10_000, 1, 100_000), integer("offset", 0, 0, 10_000_000),
         choice("status", ("online", "offline")))
def devices(p: dict[str, Any]) -> Response:
    svc = services()
    try:
        data = list_devices(svc.pool, svc.config.device_offline_after_s, p["status"], p["limit"], p["offset"])
    except DeviceError as exc:
        return error_response(400, str(exc))
    return json_response({"success": True, "data": data, "count": len(data),
                          "offline_after_s": svc.config.device_offline_after_s, "timestamp": now_iso()})


@bp.get("/api/devices/<device_id>")
@requires("read")
@accepts()
def device(_p: dict[str, Any], device_id: str) -> Response:
    if (bad := _path_device(device_id)) is not None:
        return error_response(400, bad)
    svc = services()
    found = get_device(svc.pool, device_id, svc.config.device_offline_after_s)
    if found is None:
        return error_response(404, f"no device {device_id[:80]!r}")
    return json_response({"success": True, "data": found, "timestamp": now_iso()})


@bp.patch("/api/devices/<device_id>")
@requires("admin")
def edit_device(device_id: str) -> Response:
    if (bad := _path_device(device_id)) is not None:
        return error_response(400, bad)
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
@accepts()
def dashboard_summary(_p: dict[str, Any]) -> Response:
    svc = services()
    data = summary(svc.pool, svc.config.device_offline_after_s)
    return json_response({"success": True, **data, "data": data, "timestamp": now_iso()})
