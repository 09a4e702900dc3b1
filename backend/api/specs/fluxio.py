"""backend/api/fluxio.py: the routes of seed systems' gateways (FluxIO, seed 002)."""

from backend.api.specs.common import INGEST_BODY, NUM, OBJ, STR, TIME, Operation, arr, listing, obj
from backend.api.specs.telemetry import INGEST_ERRORS, INGEST_RESPONSES, INGEST_TEXT

OPERATIONS = {
    ("POST", "/api/ingest"): Operation("FluxIO gateway ingest (JSON)", INGEST_RESPONSES, INGEST_TEXT,
                                       tag="compatibility", body=INGEST_BODY, errors=INGEST_ERRORS),
    ("GET", "/api/ingest"): Operation("FluxIO's probe of the ingest URL", {200: obj(
        "status", status=STR, service=STR, timestamp=TIME)}, tag="compatibility"),
    ("GET", "/api/flow-data"): Operation("FluxIO flow readings, one row per time", {200: listing(OBJ)},
                                         tag="compatibility"),
    ("POST", "/api/telemetry"): Operation("Seed 002 producer ingest (JSON)", INGEST_RESPONSES, INGEST_TEXT,
                                          tag="compatibility", body=INGEST_BODY, errors=INGEST_ERRORS),
    ("GET", "/api/telemetry"): Operation(
        "Seed 002 series: {signal: [{timestamp, value}]}",
        {200: {"type": "object", "additionalProperties": arr(obj("timestamp", "value", timestamp=TIME,
                                                                  value=NUM))}},
        tag="compatibility"),
    ("GET", "/api/signals"): Operation("Seed 002 signal names", {200: arr(STR)}, tag="compatibility"),
}
