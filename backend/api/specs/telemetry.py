"""backend/api/telemetry.py and backend/api/config_routes.py."""

from backend.api.specs.common import (
    BOOL,
    ERROR,
    INGEST_ANSWER,
    INGEST_BODY,
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

DEVICE_HEADER = {"X-Device-Id": {"type": "string", "description": "default device of readings that name none"}}
INGEST_ERRORS = (403, 413, 415)
INGEST_RESPONSES = {200: INGEST_ANSWER, 207: INGEST_ANSWER, 400: {"anyOf": [ERROR, INGEST_ANSWER]}}
INGEST_TEXT = ("A 2xx means durable: committed to PostgreSQL or fsync'd to the spool. 207: some readings"
               " were refused (listed); the others are stored. Duplicates (same device, metric, time and"
               " value) are counted, not stored again.")
READING = obj("device_id", "metric", "ts", device_id=STR, metric=STR, ts=TIME, value=nullable(NUM),
              value_text=nullable(STR))
BATCH_STATUS = envelope(
    "pending_records", "batch_size", "written_total", "circuit",
    pending_records=INT, batch_size=INT, batch_full=BOOL, max_pending=INT, oldest_pending_age_s=NUM,
    written_total=INT, duplicates_total=INT, quarantined_total=INT, spooled_total=INT, flushes_total=INT,
    flushes_by_method=obj(), last_flush_at=nullable(TIME), last_error=nullable(STR), worker_pid=INT,
    circuit=obj("state", state=STR), spool=OBJ, catalogue=OBJ, admission=OBJ,
    scope={"enum": ["instance", "worker"]}, workers_live=INT,
    workers=arr(obj("pid", "live", pid=INT, live=BOOL, pending_records=INT, written_total=INT, circuit=STR)))

OPERATIONS = {
    ("POST", "/telemetry/parse"): Operation(
        "Parse and store readings (the seed's endpoint)", INGEST_RESPONSES, INGEST_TEXT, body=INGEST_BODY,
        errors=INGEST_ERRORS, headers=DEVICE_HEADER),
    ("POST", "/telemetry"): Operation(
        "Store readings", INGEST_RESPONSES, INGEST_TEXT, body=INGEST_BODY, errors=INGEST_ERRORS,
        headers=DEVICE_HEADER),
    ("GET", "/telemetry/query"): Operation(
        "Readings, filtered and paged", {200: listing(OBJ, limit=INT, offset=INT, order_by=STR, desc=BOOL,
                                                      format=STR)},
        "narrow: one row per reading; wide: one row per device and time with a column per metric."),
    ("GET", "/telemetry/aggregate"): Operation(
        "One metric in time buckets", {200: envelope("data", metric=STR, bucket=STR, agg=STR,
                                                     start=nullable(TIME), end=nullable(TIME), count=INT,
                                                     data=arr(obj(bucket=TIME, device_id=STR,
                                                                  value=nullable(NUM), count=INT)))}),
    ("POST", "/telemetry/batch/flush"): Operation(
        "Write the buffered readings now", {200: envelope("batch_status", message=STR, batch_status=OBJ)},
        tag="operations"),
    ("GET", "/telemetry/batch/status"): Operation(
        "Buffer, spool and write figures", {200: BATCH_STATUS},
        "For the whole instance (every gunicorn worker) unless scope=worker: counters summed over all"
        " workers, levels over the live ones, ages and the circuit the worst of them; `workers` lists"
        " each worker. Other workers' figures are as of their last flush (at most about a second old).",
        tag="operations"),
    ("GET", "/config"): Operation(
        "Field catalogue and visible settings", {200: obj("fields", "formats", fields=arr(OBJ),
                                                          formats=arr(STR), telemetry_fields=OBJ,
                                                          parser_version=STR, batch_size=INT)},
        tag="operations"),
}
