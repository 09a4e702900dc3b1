"""Baseline 1, the framework ceiling: Flask under the same gunicorn settings, parse and answer, store nothing.

It does what the real endpoint does before storage (read the body, run the same raw-string
parser with the same context, build a JSON answer with orjson) and nothing after, so the
gap between it and the service is the cost of validation, the catalogue, buffering and the
durable write. Run as `gunicorn -c gunicorn.conf.py bench.bare_app:app`.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import orjson
from flask import Flask, Response, request

from backend.ingest.parsing import ParseContext, get_parser

app = Flask(__name__)
_RAW = get_parser("raw")


@app.get("/health")
def health() -> Response:
    return Response(b'{"status":"healthy"}', mimetype="application/json")


@app.post("/telemetry/parse")
def parse() -> Response:
    received = datetime.now(UTC)
    body = request.get_data(cache=False).decode("utf-8")
    ctx = ParseContext(received_at=received, default_device_id=request.headers.get("X-Device-Id"))
    result = _RAW.parse(body, ctx)
    readings = [r for m in result.messages for r in m.readings]
    out = {
        "success": bool(readings),
        "batch_id": str(uuid.uuid4()),
        "accepted": len(readings),
        "parsed_data": {r.metric: r.value for r in readings},
        "stored": False,
        "timestamp": received.isoformat(),
    }
    return Response(orjson.dumps(out), status=200 if readings else 400, mimetype="application/json")
