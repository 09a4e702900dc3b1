"""The SQL of alert rules and alerts: create, list and delete rules; list and resolve alerts."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from backend.fleet.alerts.rules import Rule, RuleError, iso, parse_rule
from backend.fleet.alerts.webhooks import url_refusal

ALERT_COLUMNS = ("id, rule_id, device_id, metric, alert_type, severity, message, threshold_value, actual_value,"
                 " triggered_at, created_at, is_resolved, resolved_at, resolved_by, resolved_value, notified_at,"
                 " metadata")
RULE_COLUMNS = ("id, rule_name, device_id, metric, rule_type, threshold_low, threshold_high, hysteresis,"
                " duration_s, auto_resolve, severity, is_enabled, webhook_url, created_at")


def create_rule(pool: ConnectionPool, body: object, allow_private_webhooks: bool = False) -> Rule:
    """Validate and store a rule; RuleError names what is wrong (an unreachable webhook too)."""
    values = parse_rule(body)
    url = values["webhook_url"]
    if url is not None:
        refusal = url_refusal(url, allow_private_webhooks)
        if refusal is not None:
            raise RuleError(f"webhook_url: {refusal}")
    cols = list(values)
    with pool.connection() as conn:
        row = conn.execute(
            f"INSERT INTO alert_rules ({', '.join(cols)}) VALUES ({', '.join(['%s'] * len(cols))})"
            f" RETURNING {RULE_COLUMNS}", [values[c] for c in cols]).fetchone()
    assert row is not None
    return Rule(*row)


def list_rules(pool: ConnectionPool, enabled_only: bool = False) -> list[Rule]:
    where = " WHERE is_enabled" if enabled_only else ""
    with pool.connection() as conn:
        rows = conn.execute(f"SELECT {RULE_COLUMNS} FROM alert_rules{where} ORDER BY id").fetchall()
    return [Rule(*r) for r in rows]


def delete_rule(pool: ConnectionPool, rule_id: int) -> bool:
    """Delete a rule; its open alerts are resolved (by 'rule deleted') and kept as history."""
    with pool.connection() as conn, conn.transaction():
        conn.execute("UPDATE alerts SET is_resolved = true, resolved_at = now(), resolved_by = 'rule deleted'"
                     " WHERE rule_id = %s AND NOT is_resolved", (rule_id,))
        row = conn.execute("DELETE FROM alert_rules WHERE id = %s RETURNING id", (rule_id,)).fetchone()
    return row is not None


# ---- alerts as the API shows them ------------------------------------------------------------


def alert_dict(row: tuple, device_name: str | None = None, location: str | None = None) -> dict[str, Any]:
    (aid, rule_id, device_id, metric, alert_type, severity, message, threshold, actual, triggered_at,
     created_at, is_resolved, resolved_at, resolved_by, resolved_value, notified_at, metadata) = row[:17]
    return {
        "id": aid, "rule_id": rule_id, "device_id": device_id, "metric": metric, "alert_type": alert_type,
        "severity": severity, "message": message, "threshold_value": threshold, "actual_value": actual,
        "triggered_at": iso(triggered_at), "created_at": iso(created_at), "is_resolved": is_resolved,
        "resolved_at": iso(resolved_at), "resolved_by": resolved_by, "resolved_value": resolved_value,
        "notified_at": iso(notified_at), "metadata": metadata or {},
        # FluxIO's dashboard reads the device's name and place from a joined `devices` object.
        "devices": {"device_name": device_name or device_id, "location": location},
    }


def list_alerts(pool: ConnectionPool, device_id: str | None = None, is_resolved: bool | None = None,
                limit: int = 100, offset: int = 0, severity: str | None = None,
                rule_id: int | None = None) -> list[dict[str, Any]]:
    parts, params = [], []
    if device_id:
        parts.append("a.device_id = %s")
        params.append(device_id)
    if is_resolved is not None:
        parts.append("a.is_resolved = %s")
        params.append(is_resolved)
    if severity:
        parts.append("a.severity = %s")
        params.append(severity)
    if rule_id is not None:
        parts.append("a.rule_id = %s")
        params.append(rule_id)
    where = " WHERE " + " AND ".join(parts) if parts else ""
    cols = ", ".join("a." + c.strip() for c in ALERT_COLUMNS.split(","))
    stmt = (f"SELECT {cols}, d.name, d.location FROM alerts a LEFT JOIN devices d USING (device_id)"
            f"{where} ORDER BY a.created_at DESC, a.id DESC LIMIT %s OFFSET %s")
    with pool.connection() as conn:
        rows = conn.execute(stmt, [*params, limit, offset]).fetchall()
    return [alert_dict(r[:17], r[17], r[18]) for r in rows]


def set_resolved(pool: ConnectionPool, alert_id: int, is_resolved: bool, resolved_by: str | None) -> dict | None:
    """Resolve (or reopen) one alert. A resolved alert's rule state is left as it is: while the
    value stays in breach no new alert opens; it must return to normal and breach again."""
    with pool.connection() as conn:
        if is_resolved:
            row = conn.execute(
                "UPDATE alerts SET is_resolved = true, resolved_at = coalesce(resolved_at, now()),"
                f" resolved_by = %s WHERE id = %s RETURNING {ALERT_COLUMNS}",
                (resolved_by or "api", alert_id)).fetchone()
        else:
            try:
                row = conn.execute(
                    "UPDATE alerts SET is_resolved = false, resolved_at = NULL, resolved_by = NULL,"
                    f" resolved_value = NULL WHERE id = %s RETURNING {ALERT_COLUMNS}", (alert_id,)).fetchone()
            except psycopg.errors.UniqueViolation as exc:
                raise RuleError("another alert of the same rule and device is open; resolve that one first") from exc
    return alert_dict(row) if row else None
