"""The subscriber against a real Mosquitto: every topic kind lands exact readings; re-sends store nothing twice."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import orjson
import psycopg

from tests.mqtt.conftest import wait_for

T0 = 1764806400  # 2025-12-04T00:00:00Z


def rows(db: psycopg.Connection, device: str | None = None) -> list[tuple]:
    sql = "SELECT device_id, metric, ts, value, value_text FROM telemetry_readings"
    if device:
        return db.execute(sql + " WHERE device_id = %s ORDER BY ts, metric", (device,)).fetchall()
    return db.execute(sql + " ORDER BY device_id, ts, metric").fetchall()


def at(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


def quarantined(db: psycopg.Connection) -> list[str]:
    return [r[0] for r in db.execute("SELECT reason FROM telemetry_quarantine ORDER BY id")]


def test_generic_topic_json_and_raw_land_exactly(db, broker, make_subscriber, make_publisher):
    sub = make_subscriber(broker)
    pub = make_publisher(broker.port)
    pub.publish("telemetry/pump-7", json.dumps({"ts": T0 * 1000, "flow_rate": 12.5, "state": "ok", "on": True}))
    pub.publish("telemetry/pump-8", f"ts:{T0 + 1},pressure:3.25,mode:auto")
    wait_for(lambda: len(rows(db)) == 5, 60, "5 readings")
    assert rows(db) == [
        ("pump-7", "flow_rate", at(T0), 12.5, None),
        ("pump-7", "on", at(T0), 1.0, None),
        ("pump-7", "state", at(T0), None, "ok"),
        ("pump-8", "mode", at(T0 + 1), None, "auto"),
        ("pump-8", "pressure", at(T0 + 1), 3.25, None),
    ]
    assert not sub.logged("refused")


def test_gateway_readings_come_back_from_the_query_api(db, client, broker, make_subscriber, make_publisher):
    make_subscriber(broker)
    make_publisher(broker.port).publish("v1/gateway/telemetry", json.dumps(
        {"Pump A": [{"ts": T0 * 1000 + 125, "values": {"flow": 1.25, "mode": "auto", "on": False}}]}))
    wait_for(lambda: len(rows(db)) == 3, 60, "3 readings")
    got = client.get("/telemetry/query?device_id=Pump_A&start=2025-12-04T00:00:00Z&order_by=metric&desc=false")
    assert got.status_code == 200, got.get_json()
    data = [{k: d[k] for k in ("device_id", "metric", "ts", "value")} for d in got.get_json()["data"]]
    assert data == [{"device_id": "Pump_A", "metric": "flow", "ts": "2025-12-04T00:00:00.125000Z", "value": 1.25},
                    {"device_id": "Pump_A", "metric": "mode", "ts": "2025-12-04T00:00:00.125000Z", "value": "auto"},
                    {"device_id": "Pump_A", "metric": "on", "ts": "2025-12-04T00:00:00.125000Z", "value": 0}]


def test_gateway_topic_files_each_device(db, broker, make_subscriber, make_publisher):
    make_subscriber(broker)
    pub = make_publisher(broker.port)
    body = {"Device A": [{"ts": T0 * 1000 + 250, "values": {"temperature": 21.5, "humidity": 40}}],
            "Device B": [{"ts": T0 * 1000, "values": {"temperature": -3}},
                         {"ts": T0 * 1000 + 1000, "values": {"temperature": -2.5}}]}
    pub.publish("v1/gateway/telemetry", json.dumps(body))
    wait_for(lambda: len(rows(db)) == 4, 60, "4 readings")
    assert rows(db) == [
        ("Device_A", "humidity", at(T0 + 0.25), 40.0, None),
        ("Device_A", "temperature", at(T0 + 0.25), 21.5, None),
        ("Device_B", "temperature", at(T0), -3.0, None),
        ("Device_B", "temperature", at(T0 + 1), -2.5, None),
    ]


def test_thingsboard_device_topic_through_a_mounted_listener(db, make_broker, make_subscriber, make_publisher):
    from backend.fleet.auth.keys import create_key

    info, token = create_key(db, "tb device", "ingest", ["boiler-1"])
    broker = make_broker(mounts={"tb": f"tb/{info.id}/"})
    make_subscriber(broker)
    # The device connects to its own listener with its token as username, as with ThingsBoard.
    device = make_publisher(broker.mounts["tb"], client_id="boiler-1", username=token)
    device.publish("v1/devices/me/telemetry", json.dumps({"ts": T0 * 1000, "values": {"temp": 71.25}}))
    device.publish("v1/devices/me/telemetry", json.dumps([{"ts": T0 * 1000 + 1000, "values": {"temp": 71.5}}]))
    device.publish("v1/devices/me/attributes", json.dumps({"firmware": "1.4.2", "model": "B-100"}))
    wait_for(lambda: len(rows(db)) == 2, 60, "2 readings")
    assert rows(db) == [("boiler-1", "temp", at(T0), 71.25, None), ("boiler-1", "temp", at(T0 + 1), 71.5, None)]
    wait_for(lambda: db.execute("SELECT metadata FROM devices WHERE device_id = 'boiler-1'").fetchone()[0]
             .get("firmware") == "1.4.2", 30, "attributes in the device's metadata")


def test_thingsboard_topic_with_an_unbound_key_is_refused_and_acknowledged(db, make_broker, make_subscriber,
                                                                          make_publisher):
    from backend.fleet.auth.keys import create_key

    info, _ = create_key(db, "fleet key", "ingest", None)
    broker = make_broker(mounts={"tb": f"tb/{info.id}/"})
    sub = make_subscriber(broker)
    make_publisher(broker.mounts["tb"]).publish("v1/devices/me/telemetry", json.dumps({"temp": 1}))
    wait_for(lambda: quarantined(db), 60, "a quarantine row")
    assert "not bound to exactly one device" in quarantined(db)[0]
    assert sub.logged("not bound to exactly one device")
    assert rows(db) == []


def test_teltonika_topic_maps_registers(db, broker, make_subscriber, make_publisher, tmp_path):
    mapping = tmp_path / "registers.json"
    mapping.write_bytes(orjson.dumps({"trb245-1": ["flow_rate", None, "totalizer", "temperature"]}))
    make_subscriber(broker, TELTONIKA_REGISTER_MAP=str(mapping))
    pub = make_publisher(broker.port)
    # The documented default template {"TS":"%t", "D":"%d", ...} with the Modbus data as a value list.
    pub.publish("teltonika/trb245-1/data",
                '{"TS":"' + str(T0 + 60) + '","D":"2025-12-04 00:01:00","DT":"1.75 0 123456 18.5"}')
    wait_for(lambda: len(rows(db)) == 3, 60, "3 readings")
    assert rows(db) == [("trb245-1", "flow_rate", at(T0 + 60), 1.75, None),
                        ("trb245-1", "temperature", at(T0 + 60), 18.5, None),
                        ("trb245-1", "totalizer", at(T0 + 60), 123456.0, None)]


def test_resent_message_is_stored_once(db, broker, make_subscriber, make_publisher):
    make_subscriber(broker)
    pub = make_publisher(broker.port)
    body = json.dumps({"ts": T0, "level": 3.5})
    for _ in range(3):
        pub.publish("telemetry/tank-1", body)
    pub.publish("telemetry/tank-1", json.dumps({"ts": T0 + 1, "level": 3.75}))  # a marker after the re-sends
    wait_for(lambda: len(rows(db)) == 2, 60, "2 readings")
    assert rows(db) == [("tank-1", "level", at(T0), 3.5, None), ("tank-1", "level", at(T0 + 1), 3.75, None)]


def test_idempotency_key_makes_a_resent_message_without_ts_a_no_op(db, broker, make_subscriber, make_publisher):
    # Without a device time each delivery is timed by the server, so only the key can tell
    # a re-send (after a lost PUBACK) from a new message with the same values.
    make_subscriber(broker)
    pub = make_publisher(broker.port)

    def done_keys() -> list[str]:
        return [r[0] for r in db.execute("SELECT idem_key FROM idempotency_keys WHERE state = 'done'"
                                         " AND scope = 'mqtt:telemetry/tank-2' ORDER BY 1")]

    for _ in range(3):
        pub.publish("telemetry/tank-2", json.dumps({"level": 1.25}), user={"Idempotency-Key": "gw-7-msg-1"})
    pub.publish("telemetry/tank-2", json.dumps({"level": 1.25}), user={"Idempotency-Key": "gw-7-msg-2"})
    wait_for(lambda: done_keys() == ["gw-7-msg-1", "gw-7-msg-2"], 60, "both keys' first deliveries stored")
    # A marker sent after the re-sends: once it is stored, so are they (or they never will be:
    # a re-send of a stored key can only be answered from the key's record).
    pub.publish("telemetry/tank-2", json.dumps({"ts": T0, "level": 2.0}))
    wait_for(lambda: any(r[3] == 2.0 for r in rows(db, "tank-2")), 60, "the marker")
    assert sorted(r[3] for r in rows(db, "tank-2")) == [1.25, 1.25, 2.0]  # msg-1 once, msg-2 once
    # The key reused for another body: refused with the reason, acknowledged, nothing stored.
    pub.publish("telemetry/tank-2", json.dumps({"level": 9.0}), user={"Idempotency-Key": "gw-7-msg-1"})
    wait_for(lambda: any("Idempotency-Key" in q for q in quarantined(db)), 60, "the reused key refused")
    # Without a key the same body is a new message (a new server time): stored again.
    pub.publish("telemetry/tank-2", json.dumps({"level": 1.25}))
    wait_for(lambda: len(rows(db, "tank-2")) == 4, 60, "the keyless re-send")
    assert sorted(r[3] for r in rows(db, "tank-2")) == [1.25, 1.25, 1.25, 2.0]


def test_bad_messages_are_acknowledged_logged_and_quarantined(db, broker, make_subscriber, make_publisher):
    sub = make_subscriber(broker)
    pub = make_publisher(broker.port)
    pub.publish("telemetry/pump-1", b"\xff\xfe not utf-8")
    pub.publish("telemetry/pump-1", "{not json")
    pub.publish("v1/devices/me/telemetry", '{"temp": 1}')  # no mount and no MQTT_TB_DEVICE: device unknown
    pub.publish("telemetry/pump-1", json.dumps({"ts": T0, "ok": 1}))  # the marker: later than the bad ones
    wait_for(lambda: rows(db), 60, "the good message")
    wait_for(lambda: len(sub.logged("refused")) >= 3, 30, "three refusals logged")
    before = len(sub.logged("refused"))
    text = "".join(sub.logged("refused"))
    assert "UTF-8" in text and "not valid JSON" in text and "does not say which device" in text
    # Acknowledged: a new subscriber session gets none of them again.
    sub.stop()
    sub.start()
    pub.publish("telemetry/pump-1", json.dumps({"ts": T0 + 1, "ok": 2}))
    wait_for(lambda: len(rows(db)) == 2, 60, "the second good message")
    assert len(sub.logged("refused")) == before
