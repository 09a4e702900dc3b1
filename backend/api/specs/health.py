"""backend/api/health.py."""

from backend.api.specs.common import BOOL, ERROR, INT, NUM, OBJ, STR, TIME, Operation, obj

HEALTH = obj("status", "timestamp", "database_connected", "supabase_connected",
             status={"enum": ["healthy", "degraded", "unhealthy"]}, timestamp=TIME, database_connected=BOOL,
             # name/message/version: the fields influxdb-client's health() reads
             name=STR, message=STR, version=STR,
             supabase_connected=BOOL,
             database=obj(kind={"type": "string", "description": "embedded, postgresql or supabase"}, via=STR, connected=BOOL,
                          name=STR), worker_pid=INT, oldest_unflushed_age_s=NUM,
             max_unflushed_age_s=NUM, batch_status=OBJ, spool=OBJ, reason=STR)

OPERATIONS = {
    ("GET", "/health"): Operation(
        "Liveness and database reachability", {200: HEALTH, 503: {"anyOf": [HEALTH, ERROR]}},
        "Public. `details=1` (a key with `read` scope) adds the circuit, spool counters and errors. 503"
        " while the database is unreachable (ingest still takes readings into the spool). `name`, `message`"
        " and `version` are what InfluxDB clients' health() reads.",
        tag="operations", errors=(401, 403)),
}
