"""backend/api/export.py: GET /telemetry/export, CSV or NDJSON, streamed."""

from backend.api.specs.common import Operation

OPERATIONS = {
    ("GET", "/telemetry/export"): Operation(
        "Export readings or an aggregate as CSV or NDJSON",
        {200: {"type": "string", "description": "format=csv: a header line then one row per reading (or"
                                                " bucket); format=ndjson: one JSON object per line"}},
        "Streamed as an attachment. kind=query (default) takes /telemetry/query's filters, limit and"
        " order_by (`series`: device, metric, time) with desc, oldest first by default; kind=aggregate takes"
        " /telemetry/aggregate's parameters (metric required) and exports that answer's rows. A parameter of"
        " the other kind is a 400 naming it. 503 while too many exports run or the database is unreachable.",
        content_type=("text/csv", "application/x-ndjson")),
}
