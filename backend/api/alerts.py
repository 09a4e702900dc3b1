"""`/api/alerts` (list, resolve) and `/api/alert-rules` (list, create, delete)."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, request

from ..fleet.alerts import RuleError, create_rule, delete_rule, list_alerts, list_rules, set_resolved
from ..fleet.auth import requires
from ..query import QueryError, parse_bool, parse_int
from ..services import services
from .responses import error_response, json_response, now_iso

bp = Blueprint("alerts", __name__)


def _engine():
    return current_app.extensions.get("fleet_alerts")


@bp.get("/api/alerts")
@requires("read")
def alerts() -> Response:
    args = request.args
    try:
        is_resolved = parse_bool("is_resolved", args.get("is_resolved"), None)  # type: ignore[arg-type]
        limit = parse_int("limit", args.get("limit"), 100, 1, 10_000)
        offset = parse_int("offset", args.get("offset"), 0, 0, 10_000_000)
        rule_id = parse_int("rule_id", args.get("rule_id"), -1, 0, 2**62)
    except QueryError as exc:
        return error_response(400, str(exc))
    data = list_alerts(services().pool, args.get("device_id") or None, is_resolved, limit, offset,
                       args.get("severity") or None, None if rule_id < 0 else rule_id)
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
def rules() -> Response:
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
    if not delete_rule(services().pool, rule_id):
        return error_response(404, f"no alert rule {rule_id}")
    engine = _engine()
    if engine is not None:
        engine.reload_rules()
    return json_response({"success": True, "deleted": rule_id, "timestamp": now_iso()})
