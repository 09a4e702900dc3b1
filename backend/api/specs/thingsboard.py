"""backend/api/thingsboard.py: ThingsBoard's device HTTP API (the access token in the path)."""

from backend.api.specs.common import OBJ, STR, Operation, envelope
from backend.api.specs.telemetry import INGEST_RESPONSES, INGEST_TEXT

TOKEN_TEXT = ("The token is a device-bound API key with the ingest scope (401: unknown, expired or revoked; 403:"
              " not ingest scope, or not bound to exactly one device, or a body naming another device).")

OPERATIONS = {
    ("POST", "/api/v1/<token>/telemetry"): Operation(
        "ThingsBoard device telemetry", INGEST_RESPONSES, f"{INGEST_TEXT} {TOKEN_TEXT}", tag="compatibility",
        body={"application/json": {"description": "{key: value}, [{...}], or {ts, values: {...}} (or a list)"}},
        errors=(401, 403, 413, 415)),
    ("POST", "/api/v1/<token>/attributes"): Operation(
        "ThingsBoard device attributes (merged into the device's metadata)",
        {200: envelope("device_id", "metadata", device_id=STR, metadata=OBJ)}, TOKEN_TEXT, tag="compatibility",
        body={"application/json": {"type": "object", "description": "{attribute: value}; null removes one"}},
        errors=(401, 403, 413, 415)),
}
