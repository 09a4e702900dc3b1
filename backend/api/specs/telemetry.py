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

IDEMPOTENCY_HEADER = {"Idempotency-Key": {"type": "string", "description": "a re-send with the same key gets the"
                                                                           " first answer (Idempotency-Replayed: true)"}}
DEVICE_HEADER = {"X-Device-Id": {"type": "string", "description": "default device of readings that name none"},
                 **IDEMPOTENCY_HEADER}
# 409: the same Idempotency-Key still in flight; 422: the key reused for another request.
INGEST_ERRORS = (403, 409, 413, 415, 422)
INGEST_RESPONSES = {200: INGEST_ANSWER, 207: INGEST_ANSWER, 400: {"anyOf": [ERROR, INGEST_ANSWER]}}
INGEST_TEXT = ("A 2xx means durable: committed to PostgreSQL or fsync'd to the spool. 207: some readings"
               " were refused (listed); the others are stored. Duplicates (same device, metric, time and"
               " value) are counted, not stored again.")
READING = obj("device_id", "metric", "ts", device_id=STR, metric=STR, ts=TIME, value=nullable(NUM),
              value_text=nullable(STR))
AGGREGATE_ROW = obj("bucket", "value", "count", bucket=TIME, bucket_local={"type": "string", "description": (
    "the bucket's start in `tz`, with its offset (only when tz is not UTC)")}, device_id=STR,
    metric={"type": "string", "description": "only when several metrics were asked"}, value=nullable(NUM),
    count=INT)
AGGREGATE_SERIES = obj(
    "metric", "buckets", "values", "counts", device_id={"type": "string", "description": "not with group_by=fleet"},
    metric=STR, buckets=arr(TIME), buckets_local={**arr(STR), "description": "only when tz is not UTC"},
    values=arr(nullable(NUM)), counts=arr(INT))
AGGREGATE = envelope(
    "count", "metric", "metrics", "bucket", "agg", "start", "end", "layout",
    metric={"anyOf": [STR, arr(STR)], "description": "the metric, or the list when several were asked"},
    metrics=arr(STR), bucket=STR, agg=STR, tz=STR, fill=STR, group_by={"enum": ["device", "fleet"]},
    start=TIME, end=TIME, source={"type": "string", "description": "raw, a rollup, or mixed"},
    segments=arr(obj("source", "start", "end", source=STR, start=TIME, end=TIME)), count=INT,
    layout={"enum": ["rows", "series"]},
    data={**arr(AGGREGATE_ROW), "description": "layout=rows"},
    series={**arr(AGGREGATE_SERIES), "description": "layout=series: the same points, as arrays per series"})
AGGREGATE_TEXT = ("One or several metrics (repeated or comma-separated), per device or for the fleet"
                  " (group_by=fleet: rows without device_id), in buckets of `tz` (calendar buckets follow its"
                  " days). `source`: which store answered (rollups where they cover the range, raw rows"
                  " elsewhere; `segments` lists each part); source=raw reads raw rows only. `fill` makes a row"
                  " for every bucket of every series; `downsample=n` keeps at most n buckets per series."
                  " layout=rows (default): `data`, an object per point, by bucket, device and metric;"
                  " layout=series: `series`, one object per device and metric with arrays of its buckets,"
                  " values and counts (a year of days for 100 devices is 100 objects, not 36,600).")
BATCH_STATUS = envelope(
    "pending_records", "batch_size", "written_total", "circuit",
    pending_records=INT, batch_size=INT, batch_full=BOOL, max_pending=INT, oldest_pending_age_s=NUM,
    written_total=INT, duplicates_total=INT, quarantined_total=INT, spooled_total=INT, flushes_total=INT,
    flushes_by_method=obj(), last_flush_at=nullable(TIME), last_error=nullable(STR), worker_pid=INT,
    last_flush_rows=nullable(INT), last_flush_ms=nullable(NUM), last_error_at=nullable(TIME),
    circuit=obj("state", state=STR, open_workers=INT), spool=OBJ, catalogue=OBJ, admission=OBJ,
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
                                                      format={"enum": ["narrow", "wide"]}, next=nullable(STR),
                                                      downsample=INT)},
        "narrow: one row per reading; wide: one row per device and time with a column per metric. A narrow"
        " page's `next` (null on the last page) is the keyset cursor of the page after it: pass it back as"
        " `next` with the same filters. `downsample=n` keeps at most n readings per series (LTTB)."),
    ("GET", "/telemetry/aggregate"): Operation(
        "Metrics in time buckets", {200: AGGREGATE}, AGGREGATE_TEXT),
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
