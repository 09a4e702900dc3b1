"""Seed compatibility: a FluxIO gateway and dashboard (seed 004) and seed 002's producer and chart
work against this service unchanged."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import psycopg
import requests

ADMIN = {"Authorization": "Bearer test-admin-key"}


def iso(dt: datetime) -> str:
    return dt.isoformat().replace("+00:00", "Z")


def gateway_key(client, devices=None):
    body = {"name": "teltonika-1", "scopes": ["ingest"], "devices": devices}
    return client.post("/api/keys", json=body, headers=ADMIN).get_json()["key"]


def test_gateway_posts_single_object_and_array(app, client, db):
    key = gateway_key(client)
    gw = app.test_client()
    r = gw.post("/api/ingest", json={"device_id": "NIVUS_750_01", "flow_rate": 12.5, "totalizer": 10432.7,
                                     "temperature": 14.2, "status": 0}, headers={"x-api-key": key})
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert body["success"] is True and body["message"] == "Data ingested successfully"
    t = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=3)
    batch = [{"device_id": "NIVUS_750_01", "flow_rate": 12.0 + i, "totalizer": 10433 + i, "timestamp": iso(t + timedelta(
        seconds=30 * i))} for i in range(3)]
    # no Content-Type (some gateways send none): still read as JSON
    r = gw.post("/api/ingest", data=str(batch).replace("'", '"'), headers={"x-api-key": key})
    assert r.status_code == 200, r.get_json()
    assert db.execute("SELECT count(*) FROM telemetry_readings").fetchone()[0] == 4 + 6
    assert gw.post("/api/ingest", json={"device_id": "n1", "flow_rate": 1}, headers={"x-api-key": "wrong"}
                   ).status_code == 401
    r = gw.post("/api/ingest", json={"flow_rate": 1}, headers={"x-api-key": key})
    assert r.status_code == 400 and "device_id" in r.get_json()["rejected"][0]["reason"]
    assert gw.get("/api/ingest").get_json()["status"] == "ok"  # the gateway's URL probe, no key needed


def test_flow_data_rows_like_fluxio(client):
    t = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)
    rows = [{"device_id": "n1", "flow_rate": float(i), "totalizer": 100.0 + i, "temperature": 15,
             "timestamp": iso(t + timedelta(minutes=i))} for i in range(5)]
    rows.append({"device_id": "n2", "flow_rate": 7.5, "timestamp": iso(t)})
    assert client.post("/api/ingest", json=rows, headers=ADMIN).status_code == 200
    r = client.get("/api/flow-data", query_string={"device_id": "n1", "start_time": iso(t + timedelta(minutes=1)),
                                                   "end_time": iso(t + timedelta(minutes=3)), "limit": 10})
    assert r.status_code == 200
    body = r.get_json()
    assert body["success"] is True and body["count"] == 3
    first = body["data"][0]
    assert first["created_at"] == iso(t + timedelta(minutes=3))  # newest first; end_time inclusive
    assert (first["device_id"], first["flow_rate"], first["totalizer"], first["temperature"]) == ("n1", 3, 103, 15)
    assert first["pressure"] is None and "received_at" in first
    assert [d["flow_rate"] for d in body["data"]] == [3, 2, 1]
    assert client.get("/api/flow-data", query_string={"limit": 2}).get_json()["count"] == 2
    assert len(client.get("/api/flow-data").get_json()["data"]) == 6
    assert client.get("/api/flow-data", query_string={"start_time": "yesterday"}).status_code == 400


def test_dashboard_devices_and_alerts(app, client):
    rule = client.post("/api/alert-rules", json={"device_id": "n1", "rule_name": "High flow", "rule_type": "high_flow",
                                                 "threshold_value": 20, "severity": "critical"}, headers=ADMIN)
    assert rule.status_code == 201
    key = gateway_key(client, devices=["n1"])
    gw = app.test_client()
    for v in (5, 25, 26):
        assert gw.post("/api/ingest", json={"device_id": "n1", "flow_rate": v}, headers={"x-api-key": key}
                       ).status_code == 200
    assert app.extensions["fleet_alerts"].drain(10)
    client.patch("/api/devices/n1", json={"device_name": "Inlet", "location": "Plant 2"}, headers=ADMIN)
    [dev] = client.get("/api/devices").get_json()["data"]
    assert (dev["device_name"], dev["location"], dev["status"]) == ("Inlet", "Plant 2", "online")
    assert dev["latest_data"]["flow_rate"] == 26
    alerts = client.get("/api/alerts", query_string={"is_resolved": "false", "device_id": "n1", "limit": 10})
    [a] = alerts.get_json()["data"]
    assert (a["severity"], a["actual_value"], a["threshold_value"], a["devices"]["device_name"]) == (
        "critical", 25, 20, "Inlet")
    r = client.patch("/api/alerts", json={"alert_id": a["id"], "is_resolved": True, "resolved_by": "op@site"})
    assert r.status_code == 200 and r.get_json()["data"]["resolved_by"] == "op@site"
    summary = client.get("/api/dashboard/summary").get_json()
    assert (summary["total_devices"], summary["online_devices"], summary["active_alerts"]) == (1, 1, 0)


def test_seed002_producer_and_chart(client):
    now = datetime.now(UTC).replace(microsecond=0)
    for i in range(3):
        r = client.post("/api/telemetry", json={"timestamp": iso(now - timedelta(seconds=3 - i)),
                                                "signals": {"sine": 0.5 * i, "square": 1}})
        assert r.status_code == 200 and r.get_json()["status"] == "success"
    client.post("/api/telemetry", json={"timestamp": iso(now - timedelta(hours=2)), "signals": {"sine": 9}})
    series = client.get("/api/telemetry", query_string={"hours": 1}).get_json()
    assert set(series) == {"sine", "square"}
    assert [p["value"] for p in series["sine"]] == [0, 0.5, 1]
    assert series["sine"][0]["timestamp"] == iso(now - timedelta(seconds=3))
    assert client.get("/api/signals").get_json() == ["sine", "square"]
    assert client.get("/api/telemetry", query_string={"hours": "x"}).status_code == 400


def test_fluxio_gateway_against_live_server(make_live_server):
    server = make_live_server(workers=2)
    key = server.post("/api/keys", json={"name": "gw", "scopes": ["ingest"], "devices": ["NIVUS_750_01"]}).json()["key"]
    gw = requests.Session()
    gw.headers["x-api-key"] = key
    for i in range(5):
        r = gw.post(server.url + "/api/ingest", json=[{"device_id": "NIVUS_750_01", "flow_rate": 1.0 + i,
                                                        "totalizer": 500 + i, "temperature": 12.5, "status": 0}],
                    timeout=10)
        assert r.status_code == 200, r.text
        assert r.json()["success"] is True
    r = gw.post(server.url + "/api/ingest", json={"device_id": "OTHER", "flow_rate": 1}, timeout=10)
    assert r.status_code == 403
    dash = server.get("/api/flow-data", params={"device_id": "NIVUS_750_01", "limit": 3}).json()
    assert dash["count"] == 3 and dash["data"][0]["flow_rate"] == 5
    devices = server.get("/api/devices").json()["data"]
    assert [d["device_id"] for d in devices] == ["NIVUS_750_01"] and devices[0]["latest"]["totalizer"]["value"] == 504
    assert gw.get(server.url + "/api/flow-data", timeout=10).status_code == 403  # ingest-only key


def _raw_post(server, path: str, body: bytes, headers: dict[str, str], half_close: bool = False,
              method: str = "POST"):
    """One request over a raw socket (requests cannot send a malformed chunked body)."""
    import http.client
    import socket

    with socket.create_connection(("127.0.0.1", server.port), timeout=15) as sock:
        head = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", f"Authorization: Bearer {server.api_key}",
                "Connection: close", *(f"{k}: {v}" for k, v in headers.items())]
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        resp = http.client.HTTPResponse(sock)
        resp.begin()
        return resp.status, resp.read()


CHUNKED = {"Transfer-Encoding": "chunked", "Content-Type": "application/json"}


def test_malformed_chunked_body_is_400_not_500(make_live_server):
    server = make_live_server(workers=1, threads=2)
    good = b'{"device_id": "c1", "flow_rate": 1}'
    status, body = _raw_post(server, "/api/ingest", b"%x\r\n%s\r\n0\r\n\r\n" % (len(good), good), CHUNKED)
    assert status == 200, body
    bad_bodies = {
        "size line zz": b"zz\r\n" + good + b"\r\n0\r\n\r\n",
        "chunk longer than its size": b"4\r\n" + good + b"\r\n0\r\n\r\n",
        "size line with a bad extension": b"%x;\x01\r\n%s\r\n0\r\n\r\n" % (len(good), good),
    }
    for what, raw in bad_bodies.items():
        status, body = _raw_post(server, "/api/ingest", raw, CHUNKED)
        assert status == 400, (what, status, body[:300])
        answer = orjson.loads(body)
        assert answer["success"] is False and "chunk" in answer["error"], (what, answer)
    # the body ends (client half-closes) before the chunk it announced
    status, body = _raw_post(server, "/telemetry/parse", b"100\r\nalt:1", {**CHUNKED, "X-Device-Id": "c2"},
                             half_close=True)
    assert status == 400, body[:300]
    # any route that reads a body: the same answer
    status, body = _raw_post(server, "/api/devices/c1", b"zz\r\n{}\r\n0\r\n\r\n", CHUNKED, method="PATCH")
    assert status == 400 and "chunk" in orjson.loads(body)["error"], body[:300]
    with psycopg.connect(server.database_url) as conn:
        assert conn.execute("SELECT DISTINCT device_id FROM telemetry_readings").fetchall() == [("c1",)]
    assert requests.get(server.url + "/health", timeout=5).status_code == 200  # the worker still serves
