"""Subscriber settings (bad value -> ConfigError naming it), topic routing and in-order PUBACKs."""

from __future__ import annotations

import threading

import pytest

from backend.config import Config, ConfigError
from backend.mqtt.acks import AckSequencer
from backend.mqtt.settings import from_config, parse_broker
from backend.mqtt.topics import Unroutable, route, subscriptions


def settings(**kw):
    return from_config(Config(**kw))


@pytest.mark.parametrize(("field", "value", "named"), [
    ("mqtt_broker_url", "http://broker:1883", "MQTT_BROKER_URL"),
    ("mqtt_broker_url", "mqtt://:1883", "MQTT_BROKER_URL"),
    ("mqtt_broker_url", "mqtt://host:99999", "MQTT_BROKER_URL"),
    ("mqtt_broker_url", "mqtt://host/topic", "MQTT_BROKER_URL"),
    ("mqtt_client_id", "has space", "MQTT_CLIENT_ID"),
    ("mqtt_client_id", "", "MQTT_CLIENT_ID"),
    ("mqtt_group", "a/b", "MQTT_GROUP"),
    ("mqtt_group", "+", "MQTT_GROUP"),
    ("mqtt_topics", "thingsboard,bogus", "MQTT_TOPICS"),
    ("mqtt_teltonika_topics", "a/#/b", "MQTT_TELTONIKA_TOPICS"),
    ("mqtt_teltonika_topics", "a/b+", "MQTT_TELTONIKA_TOPICS"),
    ("mqtt_teltonika_topics", "$SYS/x", "MQTT_TELTONIKA_TOPICS"),
    ("mqtt_generic_prefix", "a/b", "MQTT_GENERIC_PREFIX"),
])
def test_bad_settings_name_the_variable(field, value, named):
    with pytest.raises(ConfigError, match=named):
        settings(**{field: value})


def test_bad_numbers_are_refused_by_config():
    with pytest.raises(ConfigError, match="MQTT_RECEIVE_MAXIMUM"):
        Config.from_env({"MQTT_RECEIVE_MAXIMUM": "0"})


def test_cli_refuses_a_bad_setting_with_its_name(monkeypatch, capsys):
    from backend.mqtt.runtime import main

    monkeypatch.setenv("MQTT_CLIENT_ID", "bad id")
    assert main([]) == 2
    assert "MQTT_CLIENT_ID" in capsys.readouterr().err


@pytest.mark.parametrize(("content", "why"), [(None, "cannot read"), ("{", "not JSON"),
                                             ('{"gw": ["a", "a"]}', "appears twice")])
def test_cli_refuses_a_bad_register_map(monkeypatch, capsys, tmp_path, content, why):
    from backend.mqtt.runtime import main

    path = tmp_path / "map.json"
    if content is not None:
        path.write_text(content)
    monkeypatch.setenv("TELTONIKA_REGISTER_MAP", str(path))
    assert main([]) == 2
    err = capsys.readouterr().err
    assert "TELTONIKA_REGISTER_MAP" in err and why in err


def test_broker_url_forms():
    b = parse_broker("mqtts://user:p%40ss@broker.example:8884")
    assert (b.host, b.port, b.tls, b.username, b.password) == ("broker.example", 8884, True, "user", "p@ss")
    assert parse_broker("mqtt://10.0.0.1").port == 1883


def test_subscriptions_are_shared_by_group():
    s = settings(mqtt_group="ingest")
    subs = subscriptions(s)
    assert "$share/ingest/v1/gateway/telemetry" in subs and "$share/ingest/telemetry/+" in subs
    assert all(t.startswith("$share/ingest/") for t in subs)
    assert "v1/gateway/telemetry" in subscriptions(settings(mqtt_group=""))


def test_routes():
    s = settings(mqtt_teltonika_topics="rut/+/modbus,plant/data")
    assert route(s, "telemetry/pump-1").device == "pump-1"
    assert route(s, "v1/gateway/telemetry").kind == "gateway"
    assert route(s, "tb/k_abc/v1/devices/me/telemetry").key_ref == "k_abc"
    assert route(s, "tb/k_abc/v1/devices/me/attributes").kind == "thingsboard_attributes"
    assert route(s, "rut/trb-1/modbus").device == "trb-1"
    assert route(s, "plant/data").device is None
    for bad, why in (("v1/devices/me/telemetry", "does not say which device"), ("telemetry/a b", "not a device"),
                     ("elsewhere/x", "no subscription kind"), ("telemetry/a/b", "no subscription kind")):
        with pytest.raises(Unroutable, match=why):
            route(s, bad)
    assert route(settings(mqtt_tb_device="boiler-1"), "v1/devices/me/telemetry").device == "boiler-1"


def test_acks_leave_in_receive_order_and_old_connections_are_dropped():
    sent: list[int] = []
    seq = AckSequencer(lambda mid, qos: sent.append(mid))
    gen = seq.new_connection()
    for mid in (1, 2, 3, 4):
        assert seq.received(gen, mid, 1)
    seq.done(gen, 3, True)
    seq.done(gen, 2, True)
    assert sent == []  # 1 is not done: nothing after it goes first
    seq.done(gen, 1, True)
    assert sent == [1, 2, 3]
    new = seq.new_connection()
    seq.done(gen, 4, True)  # the previous connection's packet id: never acknowledged on the new one
    assert sent == [1, 2, 3] and not seq.received(gen, 5, 1)
    seq.received(new, 9, 1)
    seq.done(new, 9, False)  # left for redelivery: no PUBACK
    assert sent == [1, 2, 3] and seq.outstanding() == 1


def test_acks_under_concurrent_finishers_stay_ordered():
    sent: list[int] = []
    seq = AckSequencer(lambda mid, qos: sent.append(mid))
    gen = seq.new_connection()
    mids = list(range(1, 2001))
    for m in mids:
        seq.received(gen, m, 1)
    threads = [threading.Thread(target=lambda part: [seq.done(gen, m, True) for m in part], args=(mids[i::8],))
               for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sent == mids
