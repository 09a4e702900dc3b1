"""backend/api/devices.py, alerts.py and keys.py."""

from backend.api.specs.common import (
    BOOL,
    INT,
    NUM,
    OBJ,
    STR,
    TIME,
    Operation,
    arr,
    envelope,
    listing,
    nullable,
    obj,
)

KEY = obj("id", "name", "prefix", "scopes", "status", id=STR, name=STR, prefix=STR, scopes=arr(STR),
          devices=nullable(arr(STR)), status=STR, created_at=nullable(TIME), expires_at=nullable(TIME),
          revoked_at=nullable(TIME), last_used_at=nullable(TIME))
RULE_BODY = obj("rule_name", "rule_type", rule_name=STR, rule_type={"enum": ["above", "below", "outside", "silent"],
                                                                      "description": "or a FluxIO rule name"},
                metric=STR, device_id=nullable(STR), threshold_value=NUM, threshold_low=NUM, threshold_high=NUM,
                severity={"enum": ["info", "warning", "critical"]}, webhook_url=nullable(STR), auto_resolve=BOOL,
                is_enabled=BOOL)
DEVICE_BODY = obj(name=nullable(STR), location=nullable(STR), description=nullable(STR), device_type=nullable(STR),
                  metadata={"type": "object", "description": "merged into the stored one; null removes a key"})

OPERATIONS = {
    ("GET", "/api/devices"): Operation("Devices with status and latest values", {200: listing(
        OBJ, offline_after_s=INT)}, tag="fleet"),
    ("GET", "/api/devices/<device_id>"): Operation("One device", {200: envelope("data", data=OBJ)},
                                                   tag="fleet", errors=(404,)),
    ("PATCH", "/api/devices/<device_id>"): Operation(
        "Edit a device's metadata", {200: envelope("data", data=OBJ)}, tag="fleet", errors=(404,),
        body={"application/json": DEVICE_BODY}, body_required=True),
    ("GET", "/api/dashboard/summary"): Operation("Fleet summary: counts, alerts", {200: envelope("data",
                                                                                                data=OBJ)},
                                                 tag="fleet"),
    ("GET", "/api/alerts"): Operation("Alerts, open and resolved", {200: listing(OBJ)}, tag="alerts"),
    ("PATCH", "/api/alerts"): Operation(
        "Resolve (or reopen) an alert", {200: envelope("data", data=OBJ)}, tag="alerts", errors=(404, 409),
        body={"application/json": obj("alert_id", alert_id=INT, is_resolved=BOOL, resolved_by=STR)},
        body_required=True),
    ("GET", "/api/alert-rules"): Operation("Alert rules", {200: listing(OBJ)}, tag="alerts"),
    ("POST", "/api/alert-rules"): Operation("Add an alert rule", {201: envelope("data", data=OBJ)},
                                            tag="alerts", body={"application/json": RULE_BODY},
                                            body_required=True),
    ("DELETE", "/api/alert-rules/<int:rule_id>"): Operation(
        "Delete an alert rule", {200: envelope("deleted", deleted=INT)}, tag="alerts", errors=(404,)),
    ("GET", "/api/keys"): Operation("API keys (never the keys themselves)", {200: listing(KEY)}, tag="keys"),
    ("POST", "/api/keys"): Operation(
        "Create an API key", {201: envelope("data", "key", data=KEY, key=STR, note=STR)},
        "The key is shown only in this answer; the server keeps its hash.", tag="keys",
        body={"application/json": obj("name", name=STR, scopes=arr({"enum": ["ingest", "read", "admin"]}),
                                      devices=arr(STR), expires_days=NUM)}, body_required=True),
    ("DELETE", "/api/keys/<key_id>"): Operation("Revoke an API key", {200: envelope("data", data=KEY)},
                                                tag="keys", errors=(404,)),
}
