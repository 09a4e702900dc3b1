"""`/api/keys`: create (key shown once), list (never the key) and revoke API keys. Admin only."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, request

from backend.api.params import ParamError, accepts, boolean, check_text
from backend.api.responses import error_response, json_response, now_iso
from backend.fleet.auth import requires
from backend.fleet.auth.keys import KeyRequestError, create_key, list_keys, revoke_key
from backend.services import services

bp = Blueprint("keys", __name__)


@bp.get("/api/keys")
@requires("admin")
@accepts(boolean("include_revoked", True))
def keys(p: dict[str, Any]) -> Response:
    with services().pool.connection() as conn:
        data = [k.as_dict() for k in list_keys(conn, p["include_revoked"])]
    return json_response({"success": True, "data": data, "count": len(data), "timestamp": now_iso()})


@bp.post("/api/keys")
@requires("admin")
def create() -> Response:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        return error_response(400, "body: a JSON object {name, scopes, devices?, expires_days?}")
    expires = body.get("expires_days")
    if expires is not None and (isinstance(expires, bool) or not isinstance(expires, int | float)):
        return error_response(400, "expires_days: a number of days")
    try:
        with services().pool.connection() as conn:
            info, raw = create_key(conn, body.get("name"), body.get("scopes", ["ingest"]), body.get("devices"),
                                   expires)
    except KeyRequestError as exc:
        return error_response(400, str(exc))
    return json_response({"success": True, "data": info.as_dict(), "key": raw,
                          "note": "shown only this once; the server keeps only a hash", "timestamp": now_iso()},
                         201, headers={"Cache-Control": "no-store"})


@bp.delete("/api/keys/<key_id>")
@requires("admin")
def revoke(key_id: str) -> Response:
    try:
        check_text("key_id", key_id, 64)
    except ParamError as exc:
        return error_response(400, str(exc))
    with services().pool.connection() as conn:
        info = revoke_key(conn, key_id)
    if info is None:
        return error_response(404, f"no key {key_id[:40]!r}")
    return json_response({"success": True, "data": info.as_dict(), "timestamp": now_iso()})
