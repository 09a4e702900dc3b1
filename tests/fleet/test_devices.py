"""Devices: online/offline, latest value per metric (kept by the write path), metadata edits."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

ADMIN = {"Authorization": "Bearer test-admin-key"}


def iso(dt: datetime) -> str:
    return dt.isoformat().replace("+00:00", "Z")


def send(client, items):
    r = client.post("/api/ingest", json=items, headers=ADMIN)
    assert r.status_code == 200, r.get_json()
    return r


def devices(client, **params):
    r = client.get("/api/devices", query_string=params, headers=ADMIN)
    assert r.status_code == 200, r.get_json()
    return {d["device_id"]: d for d in r.get_json()["data"]}


def test_devices_with_latest_values_and_status(client, db):
    now = datetime.now(UTC).replace(microsecond=0)
    send(client, [
        {"device_id": "n1", "flow_rate": 1.0, "totalizer": 10, "timestamp": iso(now - timedelta(seconds=20))},
        {"device_id": "n1", "flow_rate": 2.5, "timestamp": iso(now - timedelta(seconds=10))},
        {"device_id": "n2", "temperature": 18.5, "flight_mode": "auto", "timestamp": iso(now)},
    ])
    # an older reading arriving later (backlog) does not replace the latest value
    send(client, {"device_id": "n1", "flow_rate": 99.0, "timestamp": iso(now - timedelta(hours=2))})
    # a re-sent duplicate changes nothing
    send(client, {"device_id": "n1", "flow_rate": 2.5, "timestamp": iso(now - timedelta(seconds=10))})
    found = devices(client)
    assert set(found) == {"n1", "n2"}
    n1 = found["n1"]
    assert n1["online"] is True and n1["status"] == "online"
    assert n1["latest"]["flow_rate"] == {"value": 2.5, "ts": iso(now - timedelta(seconds=10))}
    assert n1["latest"]["totalizer"]["value"] == 10
    assert n1["latest_data"]["flow_rate"] == 2.5 and n1["latest_data"]["created_at"] == iso(now - timedelta(seconds=10))
    assert n1["device_name"] == "n1" and n1["metadata"] == {}
    assert found["n2"]["latest"]["flight_mode"]["value"] == "auto"
    rows = db.execute("SELECT device_id, metric, value FROM device_latest ORDER BY 1, 2").fetchall()
    assert rows == [("n1", "flow_rate", 2.5), ("n1", "totalizer", 10.0), ("n2", "flight_mode", None),
                    ("n2", "temperature", 18.5)]


def test_offline_after_threshold_and_summary(client, db):
    send(client, [{"device_id": "n1", "flow_rate": 1}, {"device_id": "n2", "flow_rate": 1},
                  {"device_id": "n3", "flow_rate": 1}])
    db.execute("UPDATE devices SET last_seen = now() - interval '16 minutes' WHERE device_id = 'n3'")
    found = devices(client)
    assert [found[d]["status"] for d in ("n1", "n2", "n3")] == ["online", "online", "offline"]
    assert found["n3"]["seconds_since_seen"] >= 15 * 60
    assert set(devices(client, status="offline")) == {"n3"}
    assert set(devices(client, status="online")) == {"n1", "n2"}
    db.execute("INSERT INTO alerts (device_id, alert_type, severity, message, triggered_at)"
               " VALUES ('n1', 'above', 'critical', 'x', now()), ('n2', 'above', 'warning', 'y', now())")
    db.execute("INSERT INTO alerts (device_id, alert_type, severity, message, triggered_at, is_resolved)"
               " VALUES ('n2', 'above', 'warning', 'z', now(), true)")
    r = client.get("/api/dashboard/summary", headers=ADMIN)
    assert r.status_code == 200
    body = r.get_json()
    assert (body["total_devices"], body["online_devices"], body["offline_devices"], body["active_alerts"],
            body["critical_alerts"]) == (3, 2, 1, 2, 1)
    assert client.get("/api/devices", query_string={"status": "sideways"}, headers=ADMIN).status_code == 400


def test_admin_edits_metadata(client, db):
    send(client, {"device_id": "n1", "flow_rate": 1})
    r = client.patch("/api/devices/n1", json={"device_name": "Inlet A", "location": "Pump house",
                                              "metadata": {"pipe_mm": 300, "owner": "ops"}}, headers=ADMIN)
    assert r.status_code == 200, r.get_json()
    d = r.get_json()["data"]
    assert (d["name"], d["device_name"], d["location"], d["metadata"]) == (
        "Inlet A", "Inlet A", "Pump house", {"pipe_mm": 300, "owner": "ops"})
    # metadata merges; null removes a key
    r = client.patch("/api/devices/n1", json={"metadata": {"owner": None, "zone": 4}}, headers=ADMIN)
    assert r.get_json()["data"]["metadata"] == {"pipe_mm": 300, "zone": 4}
    assert devices(client)["n1"]["location"] == "Pump house"
    assert client.get("/api/devices/n1", headers=ADMIN).get_json()["data"]["name"] == "Inlet A"
    for body in ({"metadata": [1]}, {"colour": "red"}, {"name": 5}, {}, None):
        assert client.patch("/api/devices/n1", json=body, headers=ADMIN).status_code == 400, body
    assert client.patch("/api/devices/zz", json={"name": "x"}, headers=ADMIN).status_code == 404
    assert client.get("/api/devices/zz", headers=ADMIN).status_code == 404


def test_metadata_edits_need_admin(app, client, db):
    send(client, {"device_id": "n1", "flow_rate": 1})
    read = client.post("/api/keys", json={"name": "dash", "scopes": ["read", "ingest"]}, headers=ADMIN).get_json()["key"]
    bare = app.test_client()
    assert bare.get("/api/devices", headers={"X-API-Key": read}).status_code == 200
    r = bare.patch("/api/devices/n1", json={"name": "x"}, headers={"X-API-Key": read})
    assert r.status_code == 403
    assert db.execute("SELECT name FROM devices").fetchone()[0] is None


def test_device_id_with_a_final_newline_is_refused(client, db):
    # "$" matched before a final newline: "gw7\n" was stored as a device of its own.
    r = client.post("/api/ingest", json={"device_id": "gw7\n", "flow_rate": 1}, headers=ADMIN)
    assert r.status_code == 400 and "device_id" in r.get_json()["rejected"][0]["reason"]
    r = client.post("/telemetry/parse", query_string={"device_id": "nl\n"}, data="alt:1",
                    headers={**ADMIN, "Content-Type": "text/plain"})
    assert r.status_code == 400 and "device" in r.get_json()["error"]
    # the other users of the device-id rule: keys bound to devices, alert rules
    r = client.post("/api/keys", json={"name": "gw", "scopes": ["ingest"], "devices": ["gw7\n"]}, headers=ADMIN)
    assert r.status_code == 400
    r = client.post("/api/alert-rules", json={"device_id": "gw7\n", "rule_name": "x", "rule_type": "high_flow",
                                              "threshold_value": 1}, headers=ADMIN)
    assert r.status_code == 400
    assert db.execute("SELECT count(*) FROM telemetry_readings").fetchone() == (0,)
    assert db.execute("SELECT count(*) FROM devices").fetchone() == (0,)


def test_device_id_must_be_a_json_string(client, db):
    for device_id, shown in ((True, "a boolean (true)"), (1.5, "a number (1.5)"), (7, "a number (7)"),
                             (["n1"], "an array")):
        r = client.post("/api/ingest", json={"device_id": device_id, "flow_rate": 1}, headers=ADMIN)
        assert r.status_code == 400, (device_id, r.get_json())
        reason = r.get_json()["rejected"][0]["reason"]
        assert "device_id must be a string" in reason and shown in reason, reason
    # one bad message of a batch is listed; the good ones are stored
    r = client.post("/api/ingest", json=[{"device_id": "n1", "flow_rate": 1}, {"device_id": False, "flow_rate": 2}],
                    headers=ADMIN)
    assert r.status_code == 207 and r.get_json()["rejected"][0]["position"] == 1
    assert db.execute("SELECT DISTINCT device_id FROM telemetry_readings").fetchall() == [("n1",)]
