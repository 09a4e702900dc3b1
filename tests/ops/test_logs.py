"""JSON log lines from a live gunicorn: the access log and the application's records."""

from __future__ import annotations

import json

import requests

from tests.live_server import wait_for


def _lines(server) -> list[dict]:
    out = []
    for line in server.log_path.read_text(errors="replace").splitlines():
        if line.strip():
            out.append(json.loads(line))  # every line is one JSON object (fails on a plain line)
    return out


def _access(server, request_id: str) -> dict:
    def find() -> dict | None:
        for rec in _lines(server):
            if rec.get("logger") == "gunicorn.access" and rec.get("request_id") == request_id:
                return rec
        return None

    return wait_for(find, timeout=20, interval=0.1)


def test_access_log_is_json_with_request_id_device_key_id_status_and_duration(make_live_server):
    server = make_live_server(workers=2, env={"GUNICORN_ACCESSLOG": "-", "LOG_LEVEL": "INFO"})
    created = server.post("/api/keys", json={"name": "gateway-7", "scopes": ["ingest"]}).json()
    raw_key, key_id = created["key"], created["data"]["id"]
    r = requests.post(server.url + "/telemetry", data="device_id:boiler-3,temp:21.5",
                      headers={"X-API-Key": raw_key, "Content-Type": "text/plain", "X-Request-Id": "gw7-req.0001"},
                      timeout=30)
    assert r.status_code == 200 and r.headers["X-Request-Id"] == "gw7-req.0001"
    rec = _access(server, "gw7-req.0001")
    assert rec["status"] == 200 and rec["method"] == "POST" and rec["route"] == "/telemetry"
    assert rec["device_id"] == "boiler-3"  # from the body: no header named it
    assert rec["key_id"] == key_id
    assert isinstance(rec["duration_ms"], float) and rec["duration_ms"] > 0
    assert rec["level"] == "INFO" and "time" in rec

    # A refusal: logged with its status, the made-up id returned to the client, and the key never.
    bad = requests.get(server.url + "/telemetry/query?devce_id=x", headers={"X-API-Key": raw_key}, timeout=30)
    assert bad.status_code == 403  # an ingest key does not read
    made = bad.headers["X-Request-Id"]
    assert bad.json()["request_id"] == made
    rec = _access(server, made)
    assert rec["status"] == 403 and rec["key_id"] == key_id and rec["route"] == "/telemetry/query"
    unknown = requests.get(server.url + "/telemetry/query", headers={"X-API-Key": "tk_not-a-key"}, timeout=30)
    rec = _access(server, unknown.headers["X-Request-Id"])
    assert rec["status"] == 401 and rec["key_id"] is None
    text = server.log_path.read_text()
    assert raw_key not in text and "tk_not-a-key" not in text


def test_application_records_are_json_with_the_request_id(make_live_server, db_proxy):
    # The database goes away under a query: the app logs the detail under the request id (the
    # client's answer says only "database unavailable" and carries the same id).
    server = make_live_server(workers=1, env={"DATABASE_URL": db_proxy.url, "GUNICORN_ACCESSLOG": "-",
                                                  "LOG_LEVEL": "INFO"})
    db_proxy.down()
    r = requests.get(server.url + "/telemetry/query", timeout=90,
                     headers=server.headers(**{"X-Request-Id": "app-log-1"}))
    assert r.status_code == 503 and r.json()["request_id"] == "app-log-1"
    records = wait_for(lambda: [x for x in _lines(server) if x.get("request_id") == "app-log-1"
                                and "database unavailable" in x["message"]], timeout=20)
    assert records[0]["level"] == "WARNING" and records[0]["logger"] == "backend.api.responses"
    starts = [x for x in _lines(server) if x.get("logger") == "gunicorn.error"]
    assert any("Booting worker" in x["message"] for x in starts)  # gunicorn's own log is JSON too
