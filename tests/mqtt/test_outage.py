"""Database unreachable: the PUBACK still means durable (the spool took the readings), and
they reach PostgreSQL exactly once afterwards, replayed from the spool, not redelivered."""

from __future__ import annotations

import json
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from backend.ingest.spool import decode_batch, iter_spans, list_segments
from tests.mqtt.conftest import wait_for

T0 = 1764806400


def spooled_seqs(root: Path) -> set[int]:
    seqs: set[int] = set()
    for d in root.glob("w-*"):
        for _, seg in list_segments(d):
            for span in iter_spans(seg.read_bytes()):
                if span.payload:
                    seqs |= {int(r.value) for sub in decode_batch(span.payload) for r in sub.readings}
    return seqs


def redelivered_to_session(port: int, client_id: str) -> int:
    """Connect as the subscriber's session; messages before a fresh marker were never acknowledged."""
    got: list[str] = []
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    c.on_message = lambda _c, _u, m: got.append(m.topic)
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    c.connect("127.0.0.1", port, clean_start=False, properties=props)
    c.loop_start()
    marker = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="marker", protocol=mqtt.MQTTv5)
    marker.connect("127.0.0.1", port)
    marker.loop_start()
    wait_for(c.is_connected, 20, "the session connection")
    marker.publish("telemetry/marker", json.dumps({"ts": T0, "m": 1}), qos=1).wait_for_publish(20)
    wait_for(lambda: "telemetry/marker" in got, 30, "the marker")
    for client in (c, marker):
        client.disconnect()
        client.loop_stop()
    return got.index("telemetry/marker")


def test_outage_acknowledges_after_spooling_and_replays_exactly_once(db, broker, db_proxy, make_subscriber,
                                                                    make_publisher, tmp_path):
    n = 40
    sub = make_subscriber(broker, client_id="ingest-outage", DATABASE_URL=db_proxy.url, MQTT_GROUP="",
                          ACK_TIMEOUT="3", MAX_RETRIES="1")
    db_proxy.set_mode("down")
    pub = make_publisher(broker.port)
    for i in range(n):
        pub.publish("telemetry/outage-1", json.dumps({"ts": T0 + i, "seq": i}))
    spool = tmp_path / "spool"
    wait_for(lambda: spooled_seqs(spool) >= set(range(n)), 120, "every reading in the spool", every=0.2)
    sub.stop()  # graceful: PUBACKs already queued leave before the DISCONNECT
    assert redelivered_to_session(broker.port, "ingest-outage") == 0, "a spooled message was not acknowledged"
    db_proxy.set_mode("up")
    sub.start()  # the new process adopts the old one's spool directory and replays it
    wait_for(lambda: db.execute("SELECT count(*) FROM telemetry_readings WHERE device_id = 'outage-1'")
             .fetchone()[0] >= n, 120, f"{n} replayed readings", every=0.2)
    rows = db.execute("SELECT value, count(*) FROM telemetry_readings WHERE device_id = 'outage-1'"
                      " GROUP BY value ORDER BY value").fetchall()
    assert rows == [(float(i), 1) for i in range(n)]
