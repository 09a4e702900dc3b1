"""ThingsBoard and Teltonika parsers: documented examples, round trips, and fuzzing (never raises)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from backend.ingest.parsing import ParseContext, get_parser
from backend.ingest.parsing.teltonika import TeltonikaParser, validate_mapping
from backend.ingest.parsing.thingsboard import device_name_to_id, parse_attributes

NOW = datetime(2025, 12, 4, 12, 0, tzinfo=UTC)
CTX = ParseContext(received_at=NOW, default_device_id="dev-1")
TB = get_parser("thingsboard")
GW = get_parser("thingsboard-gateway")
T0 = 1764806400


def values(result) -> list[tuple]:
    return [(r.device_id, r.metric, r.ts, r.value, r.value_text) for r in result.readings]


# ---- ThingsBoard, the forms of its device API documentation ---------------------------------

def test_thingsboard_documented_forms():
    flat = TB.parse('{"temperature":42,"humidity":73,"active":false,"name":"x"}', CTX)
    assert values(flat) == [("dev-1", "temperature", NOW, 42.0, None), ("dev-1", "humidity", NOW, 73.0, None),
                            ("dev-1", "active", NOW, 0.0, None), ("dev-1", "name", NOW, None, "x")]
    timed = TB.parse('{"ts":1451649600512, "values":{"key1":"value1", "key2":"value2"}}', CTX)
    at = datetime(2016, 1, 1, 12, 0, 0, 512000, tzinfo=UTC)
    assert values(timed) == [("dev-1", "key1", at, None, "value1"), ("dev-1", "key2", at, None, "value2")]
    array = TB.parse('[{"ts":1451649600512,"values":{"a":1}},{"ts":1451649601512,"values":{"a":2}}]', CTX)
    assert [r.value for r in array.readings] == [1.0, 2.0] and not array.errors


def test_thingsboard_refusals_name_the_problem():
    r = TB.parse('[{"ts":1451649600512,"values":{"a":{"b":1}}}, {"values":3}, 7, {"ts":"soon","values":{"a":1}}]',
                 CTX)
    reasons = [e.reason for e in r.errors]
    assert "JSON object and array values" in reasons[0] and "values must be an object" in reasons[1]
    assert "expected an object" in reasons[2] and "timestamp" in reasons[3]
    assert [e.position for e in r.errors] == [0, 1, 2, 3]
    assert "not valid JSON" in TB.parse("{", CTX).errors[0].reason


def test_gateway_documented_form_and_device_names():
    body = ('{"Device A":[{"ts":1483228800000,"values":{"temperature":42,"humidity":80}},'
            '{"ts":1483228801000,"values":{"temperature":43,"humidity":82}}],'
            '"Device B":[{"ts":1483228800000,"values":{"temperature":42,"humidity":80}}]}')
    r = GW.parse(body, CTX)
    assert not r.errors and len(r.readings) == 6
    assert {x.device_id for x in r.readings} == {"Device_A", "Device_B"}
    assert device_name_to_id("  Pump  7 ") == "Pump_7"
    bad = GW.parse('{"a/b":[{"values":{"x":1}}],"ok":[{"values":{"x":2}}]}', CTX)
    assert [e.position for e in bad.errors] == [0] and values(bad)[0][:2] == ("ok", "x")


def test_attributes():
    assert parse_attributes('{"firmware":"1.2","n":3}') == {"firmware": "1.2", "n": 3}
    for body in ("[]", "{}", "x", '{"":1}'):
        try:
            parse_attributes(body)
        except ValueError as exc:
            assert str(exc)
        else:
            raise AssertionError(body)


scalars = st.one_of(st.integers(-10**12, 10**12), st.floats(allow_nan=False, allow_infinity=False),
                    st.booleans(), st.text(max_size=20))
names = st.from_regex(r"\A[a-z][a-z0-9_]{0,15}\Z").filter(lambda n: n not in {"ts", "time", "timestamp", "device"})


@given(st.lists(st.tuples(st.integers(946684800000, 1764806400000), st.dictionaries(names, scalars, min_size=1,
                                                                                      max_size=5)),
                min_size=1, max_size=5))
def test_thingsboard_round_trip(entries):
    body = orjson.dumps([{"ts": ts, "values": v} for ts, v in entries]).decode()
    r = TB.parse(body, CTX)
    ok = [e for e in r.errors]
    stored = {(m.position) for m in r.messages}
    assert stored | {e.position for e in ok} == set(range(len(entries)))
    for m in r.messages:
        ts, vals = entries[m.position]
        assert {x.metric for x in m.readings} == set(vals)
        assert all(x.ts == datetime.fromtimestamp(ts / 1000, tz=UTC) for x in m.readings)


json_values = st.recursive(st.one_of(st.none(), scalars), lambda c: st.one_of(
    st.lists(c, max_size=4), st.dictionaries(st.text(max_size=8), c, max_size=4)), max_leaves=12)


@settings(max_examples=300)
@given(st.one_of(st.text(max_size=200), json_values.map(lambda v: orjson.dumps(v).decode())))
def test_fuzz_never_raises_and_every_error_has_a_reason(body):
    for parser in (TB, GW, get_parser("teltonika"), TeltonikaParser({"*": ["a", None, "b"]})):
        r = parser.parse(body, CTX)
        assert all(e.reason for e in r.errors)
        assert r.messages or r.errors or not body.strip()


# ---- Teltonika -----------------------------------------------------------------------------

TEL = TeltonikaParser({"trb245-1": ["flow_rate", "totalizer", None, "temperature"], "*": ["x"]})


def test_teltonika_default_template_with_modbus_register_list():
    # {"TS":"%t", "D":"%d","MAC":"%m","DT":"%b"}: the default JSON format of a data sender.
    body = '{"TS":"T0", "D":"2025-12-04 00:00:00","DT":"1.5,100,7,20.25"}'.replace("T0", str(T0))
    r = TEL.parse(body, ParseContext(received_at=NOW, default_device_id="trb245-1"))
    at = datetime.fromtimestamp(T0, tz=UTC)
    assert values(r) == [("trb245-1", "flow_rate", at, 1.5, None), ("trb245-1", "totalizer", at, 100.0, None),
                         ("trb245-1", "temperature", at, 20.25, None)]


def test_teltonika_segments_objects_mac_and_dates():
    ctx = ParseContext(received_at=NOW, default_device_id="gw")
    # Two segments joined by a comma (segment count 2), data as an object, device from MAC.
    body = ('{"TS":@T0@,"MAC":"AA:BB:CC:DD:EE:FF","DT":{"temp":21.5}},'
            '{"D":"2025-12-04T00:00:10+00:00","Data":"{\\"rssi\\": -70}"}').replace("@T0@", str(T0))
    r = TEL.parse(body, ctx)
    assert not r.errors, r.errors
    assert values(r) == [("AA:BB:CC:DD:EE:FF", "temp", datetime.fromtimestamp(T0, tz=UTC), 21.5, None),
                         ("gw", "rssi", datetime.fromtimestamp(T0 + 10, tz=UTC), -70.0, None)]
    # No time at all: the server's time of receipt.
    assert TEL.parse('{"DT":{"a":1}}', ctx).readings[0].ts == NOW


def test_teltonika_refusals():
    ctx = ParseContext(received_at=NOW, default_device_id="trb245-1")
    cases = {
        '{"TS":"1764806400","DT":"1 2 3"}': "names 4",
        '{"TS":"1764806400","DT":"0201061aff4c00"}': "neither an object",
        '{"TS":"1764806400"}': "no data field",
        '{"TS":"yesterday","DT":{"a":1}}': "timestamp",
        '{"TS":"1764806400","DT":{"a":[1]}}': "nested",
    }
    for body, reason in cases.items():
        errors = TEL.parse(body, ctx).errors
        assert errors and reason in errors[0].reason, (body, errors)
    other = ParseContext(received_at=NOW, default_device_id="gw-2")
    assert "no register mapping" in TeltonikaParser().parse('{"DT":[1]}', other).errors[0].reason
    assert TEL.parse('{"DT":[5]}', other).readings[0].metric == "x"  # the "*" mapping


def test_register_map_validation():
    assert validate_mapping({"gw": ["a", None]}) == {"gw": ("a", None)}
    for bad in ([], {"gw": []}, {"gw": ["a", "a"]}, {"gw": ["bad name"]}, {"gw": [1]}):
        try:
            validate_mapping(bad)
        except ValueError as exc:
            assert str(exc)
        else:
            raise AssertionError(bad)


@given(st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=4, max_size=4),
       st.integers(T0 - 10**8, T0), st.booleans())
def test_teltonika_register_round_trip(regs, ts, as_text):
    data = " ".join(repr(v) for v in regs) if as_text else regs
    body = orjson.dumps({"TS": str(ts), "D": "x", "DT": data}).decode()
    r = TEL.parse(body, ParseContext(received_at=NOW + timedelta(days=1), default_device_id="trb245-1"))
    assert not r.errors
    assert [x.value for x in r.readings] == [regs[0], regs[1], regs[3]]
