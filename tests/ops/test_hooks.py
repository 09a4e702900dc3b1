"""What feeds the metrics, in one process: the pipeline's hook (format, transport), the write
observers, and the board's sampling of the fleet's own counts (rate limits, alerts, webhooks)."""

from __future__ import annotations

from datetime import UTC, datetime

from prometheus_client import generate_latest

from backend.ingest.pipeline import IngestPipeline, IngestRefused, IngestRequest
from backend.services import EXTENSION
from tests.live_server import wait_for

ADMIN = {"Authorization": "Bearer test-admin-key"}


def _value(app, name: str, **labels: str) -> float:
    registry = app.extensions[EXTENSION].ops.metrics.registry
    value = registry.get_sample_value(name, labels or None)
    return 0.0 if value is None else value


def test_pipeline_counts_by_format_and_transport(app, client):
    svc = app.extensions[EXTENSION]
    r = client.post("/telemetry", data="device_id:h1,temp:1,ts:2026-01-01T00:00:00Z\nbad line",
                    headers={**ADMIN, "Content-Type": "text/plain"})
    assert r.status_code == 207 and r.json["accepted"] == 1, r.json
    assert _value(app, "telemetry_readings_accepted_total", format="raw", transport="http") == 1
    assert _value(app, "telemetry_readings_rejected_total", format="raw", transport="http") == 1
    again = client.post("/telemetry", data="device_id:h1,temp:1,ts:2026-01-01T00:00:00Z",
                        headers={**ADMIN, "Content-Type": "text/plain"})
    assert again.json["duplicates"] == 1
    assert _value(app, "telemetry_readings_duplicate_total", format="raw", transport="http") == 1
    # Another transport (the MQTT subscriber, line protocol) calls the same entry with its name.
    pipeline = IngestPipeline(svc.config, svc.buffer, svc.catalogue, svc.ingest_events)
    out = pipeline.run(IngestRequest(body=b'{"device_id": "h2", "temp": 2, "ts": "2026-01-01T00:00:01Z"}',
                                     content_type="application/json"), transport="mqtt")
    assert out.accepted == 1
    assert _value(app, "telemetry_readings_accepted_total", format="json", transport="mqtt") == 1
    try:
        pipeline.run(IngestRequest(body=b"x", content_type="image/png"), transport="mqtt")
    except IngestRefused:
        pass
    assert _value(app, "telemetry_ingest_requests_refused_total", reason="unsupported_type", transport="mqtt") == 1
    assert _value(app, "telemetry_http_requests_total", route="/telemetry", method="POST", status="207") == 1
    assert _value(app, "telemetry_flush_readings_count") >= 2  # the write observers saw the flushes
    assert _value(app, "telemetry_write_duration_seconds_count") >= 2
    assert b"telemetry_stream_subscribers 0.0" in generate_latest(svc.ops.metrics.registry)


def test_board_turns_the_fleets_counts_into_counters(make_app):
    app = make_app(rate_limit_ip="3/minute")
    client = app.test_client()
    board = app.extensions[EXTENSION].ops.board
    codes = [client.get("/telemetry/query").status_code for _ in range(5)]  # no key: counted per address
    assert codes == [401, 401, 401, 429, 429]
    client.post("/api/alert-rules", json={"rule_name": "hot", "metric": "temp", "rule_type": "above",
                                          "threshold_value": 10}, headers=ADMIN)
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    assert client.post("/api/ingest", json={"device_id": "b1", "temp": 42, "timestamp": now},
                       headers=ADMIN).status_code == 200
    engine = app.extensions["fleet_alerts"]
    wait_for(lambda: engine.drain(1) and engine.stats["opened"] == 1, timeout=30)
    board.round()
    assert _value(app, "telemetry_rate_limited_requests_total") == 2
    assert _value(app, "telemetry_alert_evaluated_readings_total") >= 1
    assert _value(app, "telemetry_alerts_opened_total") == 1
    board.round()  # sampled again: nothing counted twice
    assert _value(app, "telemetry_rate_limited_requests_total") == 2
    assert _value(app, "telemetry_alerts_opened_total") == 1
    assert _value(app, "telemetry_workers") == 1 and _value(app, "telemetry_circuit_state") == 0
