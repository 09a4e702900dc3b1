"""backend/api/line_protocol.py: the InfluxDB door (/write, /api/v2/write, /query, /ping, /ready)."""

from backend.api.specs.common import ERROR, INT, STR, Operation, arr, obj
from backend.api.specs.telemetry import DEVICE_HEADER

# Every error of these routes carries InfluxDB's `code` and `message` besides our own fields.
INFLUX_ERROR = {"allOf": [ERROR, obj("code", "message", code=STR, message=STR)]}
# Some lines refused: the valid ones are stored; the first bad line is named.
PARTIAL = obj("code", "message", "success", "error", "line", code={"const": "invalid"}, message=STR,
              success={"const": False}, error=STR, line=INT, lines_refused=INT, written=INT, duplicates=INT,
              refused=arr(obj("line", "reason", line=INT, reason=STR)))
LINE_BODY = {"text/plain": {"type": "string", "description": "InfluxDB line protocol: measurement,tag=v field=1 ts"}}
WRITE_ERRORS = {400: {"anyOf": [INFLUX_ERROR, PARTIAL]}, 401: INFLUX_ERROR, 403: INFLUX_ERROR, 409: INFLUX_ERROR,
                413: INFLUX_ERROR, 415: INFLUX_ERROR, 422: INFLUX_ERROR, 429: INFLUX_ERROR, 503: INFLUX_ERROR}
WRITE_TEXT = ("204 when every line is durable. When some lines are bad the valid ones are stored and the 400"
              " names the first bad line (`line`, `refused`). The device comes from a tag (or device_id /"
              " X-Device-Id); db/rp and org/bucket are accepted and not used. Credentials: `Authorization:"
              " Token <key>`, Bearer, X-API-Key, and for 1.x u/p or Basic auth with the key as password.")

OPERATIONS = {
    ("POST", "/write"): Operation("InfluxDB 1.x write (line protocol)", {204: None, **WRITE_ERRORS}, WRITE_TEXT,
                                  tag="influxdb", body=LINE_BODY, headers=DEVICE_HEADER),
    ("POST", "/api/v2/write"): Operation("InfluxDB 2.x write (line protocol)", {204: None, **WRITE_ERRORS},
                                         WRITE_TEXT, tag="influxdb", body=LINE_BODY, headers=DEVICE_HEADER),
    ("POST", "/query"): Operation(
        "InfluxDB 1.x query: only CREATE DATABASE (a no-op)",
        {200: obj("results", results=arr(obj("statement_id", statement_id=INT))), 400: INFLUX_ERROR,
         401: INFLUX_ERROR, 403: INFLUX_ERROR, 429: INFLUX_ERROR, 503: INFLUX_ERROR},
        "Telegraf sends CREATE DATABASE at start; any other statement is a 400 (read data with GET"
        " /telemetry/query). `q` in the query string or a form body.", tag="influxdb",
        body={"application/x-www-form-urlencoded": obj(q=STR)}),
    ("GET", "/ping"): Operation(
        "InfluxDB ping", {200: obj("version", version=STR), 204: None, 400: INFLUX_ERROR, 429: INFLUX_ERROR,
                          503: INFLUX_ERROR},
        "204 with X-Influxdb-Version and X-Influxdb-Build; verbose=true: 200 with the version.", tag="influxdb"),
    ("GET", "/ready"): Operation(
        "InfluxDB readiness", {200: obj("status", "started", "up", status={"const": "ready"}, started=STR, up=STR),
                               400: INFLUX_ERROR, 429: INFLUX_ERROR, 503: INFLUX_ERROR},
        tag="influxdb"),
}
