"""`/api/alerts` (list, resolve) and `/api/alert-rules` (list, create, delete)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, request

from backend.api.params import accepts, boolean, choice, integer, text
from backend.api.responses import error_response, json_response, now_iso
from backend.fleet.alerts import SEVERITIES, RuleError, create_rule, delete_rule, list_alerts, list_rules, set_resolved
from backend.fleet.auth import requires
from backend.ingest.parsing.base import MAX_DEVICE_ID_LEN
from backend.services import services

bp = Blueprint("alerts", __name__)


def _engine():
    return current_app.extensions.get("fleet_alerts")


@bp.get("/api/alerts")
@requires("read")
@accepts(
    text("device_id", max_len=MAX_DEVICE_ID_LEN),
    boolean("is_resolved", None),
    choice("severity", SEVERITIES),
    integer("rule_id", None, 0, 2**62),
    integer("limit", 100, 1, 10_000),
    integer("offset", 0, 0, 10_000_000),
)
def alerts(p: dict[str, Any]) -> Response:
    data = list_alerts(services().pool, p["device_id"], p["is_resolved"], p["limit"], p["offset"], p["severity"],
                       p["rule_id"])
    return json_response({"success": True, "data": data, "count": len(data), "timestamp": now_iso()})


@bp.patch("/api/alerts")
@requires("admin")
def resolve() -> Response:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        return error_response(400, "body: a JSON object {alert_id, is_resolved, resolved_by}")
    alert_id = body.get("alert_id", body.get("id"))
    if isinstance(alert_id, str) and alert_id.isdigit():
        alert_id = int(alert_id)
    if not isinstance(alert_id, int) or isinstance(alert_id, bool):
        return error_response(400, "alert_id is required (the alert's id)")
    is_resolved = body.get("is_resolved", True)
    if not isinstance(is_resolved, bool):
        return error_response(400, "is_resolved: true or false")
    resolved_by = body.get("resolved_by")
    if resolved_by is not None and (not isinstance(resolved_by, str) or len(resolved_by) > 200):
        return error_response(400, "resolved_by: a string of at most 200 characters")
    try:
        data = set_resolved(services().pool, alert_id, is_resolved, resolved_by)
    except RuleError as exc:
        return error_response(409, str(exc))
    if data is None:
        return error_response(404, f"no alert {alert_id}")
    return json_response({"success": True, "data": data, "timestamp": now_iso()})


@bp.get("/api/alert-rules")
@requires("read")
@accepts()
def rules(_p: dict[str, Any]) -> Response:
    data = [r.as_dict() for r in list_rules(services().pool)]
    return json_response({"success": True, "data": data, "count": len(data), "timestamp": now_iso()})


@bp.post("/api/alert-rules")
@requires("admin")
def add_rule() -> Response:
    svc = services()
    try:
        rule = create_rule(svc.pool, request.get_json(silent=True), svc.config.alert_webhook_allow_private)
    except RuleError as exc:
        return error_response(400, str(exc))
    engine = _engine()
    if engine is not None:
        engine.reload_rules()  # this worker at once; the others within a few seconds
    return json_response({"success": True, "data": rule.as_dict(), "timestamp": now_iso()}, 201)


@bp.delete("/api/alert-rules/<int:rule_id>")
@requires("admin")
def remove_rule(rule_id: int) -> Response:
    if rule_id >= 2**63:  # no bigint id is that large (and PostgreSQL would refuse the parameter)
        return error_response(404, f"no alert rule {rule_id}")
    if not delete_rule(services().pool, rule_id):
        return error_response(404, f"no alert rule {rule_id}")
    engine = _engine()
    if engine is not None:
        engine.reload_rules()
    return json_response({"success": True, "deleted": rule_id, "timestamp": now_iso()})
