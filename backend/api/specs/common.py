"""The vocabulary of the spec modules: JSON Schema pieces and `Operation`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Schema = dict[str, Any]

STR: Schema = {"type": "string"}
INT: Schema = {"type": "integer"}
NUM: Schema = {"type": "number"}
BOOL: Schema = {"type": "boolean"}
TIME: Schema = {"type": "string", "description": "ISO 8601, UTC, ending in Z"}
ANY: Schema = {}
OBJ: Schema = {"type": "object"}


def nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


def arr(items: Schema | None = None) -> Schema:
    return {"type": "array", "items": items if items is not None else {}}


def obj(*required: str, **props: Schema) -> Schema:
    """An object with these properties (others allowed: answers grow, clients must ignore new keys)."""
    out: Schema = {"type": "object", "properties": props}
    if required:
        out["required"] = list(required)
    return out


def envelope(*required: str, **props: Schema) -> Schema:
    """The usual answer: {"success": true, ..., "timestamp"}."""
    return obj("success", *required, success=BOOL, timestamp=TIME, **props)


def listing(item: Schema | None = None, **props: Schema) -> Schema:
    return envelope("data", "count", data=arr(item or OBJ), count=INT, **props)


ERROR: Schema = obj("success", "error", "status", success={"const": False}, error=STR, status=INT,
                    reason=STR, request_id=STR, timestamp=TIME, parameter=STR, accepted=arr(STR))

INGEST_ANSWER: Schema = obj(
    "success", "batch_id", "format", "accepted", "parsed", "stored",
    success=BOOL, batch_id=STR, format=STR, messages=INT, accepted=INT, parsed=INT, duplicates=INT,
    conflicts=INT, conflicting=arr(obj(position=INT, metric=STR, reason=STR)), rejected_count=INT,
    rejected_readings=INT, rejected=arr(OBJ), stored=BOOL, timestamp=TIME, durability=STR, quarantined=INT,
    server_timed=INT, server_time_rule=STR, parsed_data=OBJ,
    batch_status=obj(pending_records=INT, batch_size=INT, batch_full=BOOL), error=STR)

# Ingest bodies: any text; the parser is chosen by Content-Type (or ?format=).
INGEST_BODY: dict[str, Schema] = {
    "text/plain": {"type": "string", "description": "raw lines: device_id:d1,metric:value,...,ts:..."},
    "application/json": {"description": "a reading object, an array of them, or {device_id, readings}"},
}


@dataclass(frozen=True)
class Operation:
    summary: str
    # status -> JSON schema of the answer (2xx and route-specific errors); None: no body (204, a redirect)
    responses: dict[int, Schema | None]
    description: str = ""
    tag: str = "telemetry"
    body: dict[str, Schema] | None = None  # media type -> schema
    body_required: bool = False
    content_type: str | tuple[str, ...] = "application/json"  # of the 2xx answers (several: any of them)
    errors: tuple[int, ...] = ()  # statuses beyond the usual ones (404, 409, 413, 415 ...)
    headers: dict[str, Schema] = field(default_factory=dict)  # request headers
    # An answer that does not end (text/event-stream): marked `x-streaming`, which the
    # Schemathesis run leaves out (each example would wait for its request timeout).
    streaming: bool = False
