"""ThingsBoard's device HTTP API with device-bound keys, and Teltonika bodies over HTTP."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import orjson

from backend.fleet.auth.keys import create_key

T0 = 1764806400


def at(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


def rows(db) -> list[tuple]:
    return db.execute("SELECT device_id, metric, ts, value, value_text FROM telemetry_readings"
                      " ORDER BY device_id, ts, metric").fetchall()


def test_telemetry_forms_land_on_the_tokens_device(db, client):
    _, token = create_key(db, "boiler", "ingest", ["boiler-1"])
    anon = client.application.test_client()  # no Authorization header: the token in the path is the credential
    r = anon.post(f"/api/v1/{token}/telemetry", json={"ts": T0 * 1000, "values": {"temp": 71.25, "burner": True}})
    assert r.status_code == 200, r.get_json()
    r = anon.post(f"/api/v1/{token}/telemetry", json=[{"ts": T0 * 1000 + 500, "values": {"temp": 71.5}},
                                                     {"ts": T0 * 1000 + 1000, "values": {"mode": "eco"}}])
    assert r.status_code == 200 and r.get_json()["accepted"] == 2
    r = anon.post(f"/api/v1/{token}/telemetry", json={"pressure": 1.5})  # flat: server time
    assert r.status_code == 200
    got = rows(db)
    assert got[:4] == [("boiler-1", "burner", at(T0), 1.0, None), ("boiler-1", "temp", at(T0), 71.25, None),
                       ("boiler-1", "temp", at(T0 + 0.5), 71.5, None), ("boiler-1", "mode", at(T0 + 1), None, "eco")]
    assert got[4][:2] == ("boiler-1", "pressure") and got[4][3] == 1.5


def test_resend_stores_nothing_twice(db, client):
    _, token = create_key(db, "boiler", "ingest", ["boiler-1"])
    body = {"ts": T0 * 1000, "values": {"temp": 70}}
    first = client.post(f"/api/v1/{token}/telemetry", json=body).get_json()
    second = client.post(f"/api/v1/{token}/telemetry", json=body).get_json()
    assert (first["accepted"], second["accepted"], second["duplicates"]) == (1, 0, 1)
    assert len(rows(db)) == 1


def test_tokens_that_may_not_write(db, client):
    anon = client.application.test_client()
    assert anon.post("/api/v1/tk_unknown/telemetry", json={"a": 1}).status_code == 401
    _, fleet = create_key(db, "fleet", "ingest", None)
    r = anon.post(f"/api/v1/{fleet}/telemetry", json={"a": 1})
    assert r.status_code == 403 and "exactly one device" in r.get_json()["error"]
    _, reader = create_key(db, "reader", "read", ["boiler-1"])
    assert anon.post(f"/api/v1/{reader}/telemetry", json={"a": 1}).status_code == 403
    _, bound = create_key(db, "boiler", "ingest", ["boiler-1"])
    # A body naming another device than the token's: 403, nothing stored.
    r = anon.post(f"/api/v1/{bound}/telemetry", json={"device_id": "other", "a": 1})
    assert r.status_code == 403 and "other" in r.get_json()["error"]
    r = anon.post(f"/api/v1/{bound}/telemetry", json={"ts": 1, "a": 1})  # ts outside {"ts", "values"}
    assert r.status_code == 400 and "reserved" in json.dumps(r.get_json())
    assert rows(db) == []


def test_attributes_merge_into_device_metadata(db, client):
    _, token = create_key(db, "boiler", "ingest", ["boiler-1"])
    r = client.post(f"/api/v1/{token}/attributes", json={"firmware": "1.4.2", "model": "B-100"})
    assert r.status_code == 200, r.get_json()
    r = client.post(f"/api/v1/{token}/attributes", json={"firmware": "1.5.0", "model": None})
    assert r.get_json()["metadata"] == {"firmware": "1.5.0"}
    assert db.execute("SELECT metadata FROM devices WHERE device_id = 'boiler-1'").fetchone()[0] == {
        "firmware": "1.5.0"}
    assert client.post(f"/api/v1/{token}/attributes", data="[1]",
                       headers={"Content-Type": "application/json"}).status_code == 400


def test_teltonika_body_over_http_with_the_register_map(db, make_app, tmp_path):
    mapping = tmp_path / "map.json"
    mapping.write_bytes(orjson.dumps({"trb245-1": ["flow_rate", "totalizer", None, "temperature"]}))
    app = make_app(teltonika_register_map=str(mapping))
    c = app.test_client()
    c.environ_base["HTTP_X_API_KEY"] = "test-admin-key"
    # Two segments of the documented default template, Modbus data as a value list (segment count 2).
    body = ('[{"TS":"T0","D":"2025-12-04 00:00:00","DT":"1.5 100 7 20.25"},'
            '{"TS":"T1","D":"2025-12-04 00:01:00","DT":[1.75, 101, 7, 20.5]}]').replace(
        "T0", str(T0)).replace("T1", str(T0 + 60))
    r = c.post("/telemetry/parse?format=teltonika&device_id=trb245-1", data=body,
               headers={"Content-Type": "application/json"})
    assert r.status_code == 200, r.get_json()
    assert rows(db) == [("trb245-1", "flow_rate", at(T0), 1.5, None), ("trb245-1", "temperature", at(T0), 20.25, None),
                        ("trb245-1", "totalizer", at(T0), 100.0, None),
                        ("trb245-1", "flow_rate", at(T0 + 60), 1.75, None),
                        ("trb245-1", "temperature", at(T0 + 60), 20.5, None),
                        ("trb245-1", "totalizer", at(T0 + 60), 101.0, None)]
    r = c.post("/telemetry/parse?format=teltonika&device_id=other-gw", data=body,
               headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "no register mapping" in json.dumps(r.get_json())


def test_teltonika_body_on_the_fluxio_route_is_recognised(db, client):
    """Issue 15: a Data to Server body on /api/ingest stored TS as a metric and the data as text."""
    body = '{"TS":"@","D":"2025-12-04 00:00:00","DT":{"flow_rate":1.5,"temperature":20.25}}'.replace("@", str(T0))
    r = client.post("/api/ingest?device_id=trb245-2", data=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["format"] == "teltonika"
    assert rows(db) == [("trb245-2", "flow_rate", at(T0), 1.5, None), ("trb245-2", "temperature", at(T0), 20.25, None)]
