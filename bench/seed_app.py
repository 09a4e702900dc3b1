"""Baseline 2, the seed's design: one INSERT per request in autocommit, one wide row, its own table.

The seed parsed each request and inserted it as one row straight away (no batching). This
is that design, tuned as well as the service: same gunicorn settings, the same parser,
psycopg 3 with a pool that has one connection per gunicorn thread (no thread ever waits
for a connection) and a prepared INSERT. Run as `gunicorn -c gunicorn.conf.py bench.seed_app:app`
after `bench.dataset.SEED_SCHEMA` was created (bench/run.py does it).
"""

from __future__ import annotations

import os
from datetime import UTC, datetime

import orjson
from flask import Flask, Response, request
from psycopg_pool import ConnectionPool

from backend.ingest.parsing import PARSER_VERSION, ParseContext, get_parser

_INSERT = (
    "INSERT INTO seed_telemetry (device_id, ts, roll, pitch, alt, bat_v, raw_data, parser_version, data_source)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id"
)

app = Flask(__name__)
_RAW = get_parser("raw")
_THREADS = int(os.environ.get("GUNICORN_THREADS", "16"))
# One pool per worker process (gunicorn imports this module after forking, no preload).
pool = ConnectionPool(os.environ["DATABASE_URL"], min_size=_THREADS, max_size=_THREADS,
                      kwargs={"autocommit": True}, name="seed", open=True)


@app.get("/health")
def health() -> Response:
    return Response(b'{"status":"healthy"}', mimetype="application/json")


@app.post("/telemetry/parse")
def parse() -> Response:
    received = datetime.now(UTC)
    body = request.get_data(cache=False).decode("utf-8")
    ctx = ParseContext(received_at=received, default_device_id=request.headers.get("X-Device-Id"))
    result = _RAW.parse(body, ctx)
    if not result.messages:
        return Response(b'{"success":false}', status=400, mimetype="application/json")
    msg = result.messages[0]
    values = {r.metric: r.value for r in msg.readings}
    first = msg.readings[0]
    with pool.connection() as conn:
        row_id = conn.execute(_INSERT, (first.device_id, first.ts, values.get("roll"), values.get("pitch"),
                                        values.get("alt"), values.get("bat_v"), msg.raw, PARSER_VERSION,
                                        "flask_api")).fetchone()[0]
    out = {"success": True, "id": row_id, "parsed_data": {**values, "device_id": first.device_id},
           "stored": True, "timestamp": received.isoformat()}
    return Response(orjson.dumps(out), mimetype="application/json")
