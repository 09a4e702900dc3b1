"""The parsers are pure: text in, readings and errors out. Property tests included."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backend.ingest.parsing import ParseContext, Reading, get_parser, parser_for_content_type
from backend.ingest.parsing.base import parse_time
from backend.ingest.parsing.raw import format_raw

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
CTX = ParseContext(received_at=NOW, default_device_id="dev1")
raw = get_parser("raw")
jsonp = get_parser("json")


def test_seed_raw_string():
    result = raw.parse("roll:15.2,pitch:8.1,alt:150,bat_v:12.4", CTX)
    assert not result.errors
    assert [(r.metric, r.value) for r in result.readings] == [
        ("roll", 15.2), ("pitch", 8.1), ("alt", 150.0), ("bat_v", 12.4)]
    assert {r.device_id for r in result.readings} == {"dev1"}
    assert {r.ts for r in result.readings} == {NOW}


def test_raw_value_kinds_and_many_lines():
    body = "flight_mode:AUTO,armed:true,led:off\n\n# comment\ndevice_id:d2,ts:2026-11-23T11:00:00Z,x:-1e3"
    result = raw.parse(body, CTX)
    assert not result.errors
    first, second = result.messages
    assert [(r.metric, r.value, r.value_text) for r in first.readings] == [
        ("flight_mode", None, "AUTO"), ("armed", 1.0, None), ("led", 0.0, None)]
    assert second.position == 4
    assert second.readings == [Reading("d2", "x", datetime(2026, 11, 23, 11, tzinfo=UTC), -1000.0)]


@pytest.mark.parametrize("line, reason", [
    ("alt:nan", "not a finite number"),
    ("alt:inf", "not a finite number"),
    ("alt:", "empty value"),
    (":5", "empty field name"),
    ("a" * 65 + ":1", "longer than 64"),
    ("al t:1", "characters outside"),
    ("alt", "is not key:value"),
    ("ts:1999-12-31T23:59:59Z,alt:1", "before 2000"),
    ("ts:2026-11-25T12:00:00Z,alt:1", "more than a day ahead"),
    ("ts:yesterday,alt:1", "neither ISO 8601 nor epoch"),
    ("alt:1,alt:2", "appears twice"),
    ("device_id:bad id,alt:1", "device_id"),
    ("ts:2026-11-23T11:00:00Z", "no readings"),
])
def test_raw_rejections_name_the_problem(line, reason):
    result = raw.parse(line, CTX)
    assert result.messages == []
    assert len(result.errors) == 1 and reason in result.errors[0].reason
    assert result.errors[0].position == 1


def test_bad_line_does_not_take_good_siblings_down():
    result = raw.parse("alt:1\nalt:nan\npitch:2", CTX)
    assert [m.position for m in result.messages] == [1, 3]
    assert [e.position for e in result.errors] == [2]


def test_no_device_is_an_error():
    result = raw.parse("alt:1", ParseContext(received_at=NOW))
    assert "no device_id" in result.errors[0].reason


@pytest.mark.parametrize("value, expected", [
    (1_763_899_200, datetime(2025, 11, 23, 12, tzinfo=UTC)),            # seconds
    (1_763_899_200_123, datetime(2025, 11, 23, 12, 0, 0, 123000, tzinfo=UTC)),  # ms
    (1_763_899_200_123_456, datetime(2025, 11, 23, 12, 0, 0, 123456, tzinfo=UTC)),  # µs
    (1_763_899_200_123_456_000, datetime(2025, 11, 23, 12, 0, 0, 123456, tzinfo=UTC)),  # ns
    ("2025-11-23T12:00:00+00:00", datetime(2025, 11, 23, 12, tzinfo=UTC)),
    ("2025-11-23T13:00:00+01:00", datetime(2025, 11, 23, 12, tzinfo=UTC)),
    ("2025-11-23 12:00:00", datetime(2025, 11, 23, 12, tzinfo=UTC)),   # naive means UTC
])
def test_epoch_units_told_apart_by_magnitude(value, expected):
    assert parse_time(value, CTX) == expected


def test_json_object_array_signals_and_fluxio():
    body = """[
      {"device_id": "n1", "flow_rate": 12.5, "totalizer": 1000, "temperature": 18.2, "status": 0},
      {"timestamp": "2026-11-23T11:59:00Z", "signals": {"sine": 0.5, "noise": -0.1}},
      {"device_id": "d3", "ts": 1763899200, "gps": {"lat": 52.1, "lon": 4.3}, "armed": false},
      17,
      {"device_id": "d4", "alt": null}
    ]"""
    result = jsonp.parse(body, CTX)
    assert [m.position for m in result.messages] == [0, 1, 2]
    assert [(e.position, e.reason) for e in result.errors] == [
        (3, "expected an object, got int"), (4, "field 'alt': null is not a value")]
    n1, sig, d3 = result.messages
    assert {r.metric: r.value for r in n1.readings} == {
        "flow_rate": 12.5, "totalizer": 1000.0, "temperature": 18.2, "status": 0.0}
    assert {r.device_id for r in sig.readings} == {"dev1"}
    assert {r.metric for r in d3.readings} == {"gps_lat", "gps_lon", "armed"}


def test_json_errors():
    assert "not valid JSON" in jsonp.parse("{nope", CTX).errors[0].reason
    bad = jsonp.parse('{"device_id": "x", "v": [1, 2]}', CTX).errors[0].reason
    assert "list is not a number" in bad
    assert "nested more than one level" in jsonp.parse('{"a": {"b": {"c": 1}}}', CTX).errors[0].reason


def test_content_type_selects_parser():
    assert parser_for_content_type("text/plain; charset=utf-8").name == "raw"
    assert parser_for_content_type("application/json").name == "json"
    assert parser_for_content_type("application/xml") is None


def test_too_many_messages_is_reported():
    ctx = ParseContext(received_at=NOW, default_device_id="d", max_messages=2)
    result = raw.parse("a:1\na:2\na:3", ctx)
    assert len(result.messages) == 2
    assert "more than 2 messages" in result.errors[0].reason


# ---- property-based ----------------------------------------------------------------------

names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_.\-]{0,30}", fullmatch=True).filter(
    lambda n: n not in ("ts", "timestamp", "time", "device_id", "device"))
devices = st.from_regex(r"[A-Za-z0-9_.:\-]{1,40}", fullmatch=True)
numbers = st.floats(allow_nan=False, allow_infinity=False, width=64)
texts = st.from_regex(r"[A-Za-z_][A-Za-z0-9_ ]{0,20}[A-Za-z0-9_]", fullmatch=True).filter(
    lambda t: t.lower() not in ("true", "false", "on", "off", "nan", "inf", "infinity"))
times = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2026, 11, 24),
                     timezones=st.just(UTC))


@st.composite
def messages(draw):
    device = draw(devices)
    ts = draw(times)
    metric_names = draw(st.lists(names, min_size=1, max_size=8, unique=True))
    readings = []
    for name in metric_names:
        if draw(st.booleans()):
            readings.append(Reading(device, name, ts, draw(numbers)))
        else:
            readings.append(Reading(device, name, ts, None, draw(texts)))
    return readings


@settings(max_examples=300, deadline=None)
@given(st.lists(messages(), min_size=1, max_size=5))
def test_raw_format_then_parse_round_trips(batch):
    body = "\n".join(format_raw(m) for m in batch)
    result = raw.parse(body, CTX)
    assert result.errors == []
    assert [m.readings for m in result.messages] == batch


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_raw_parser_never_raises_and_accounts_for_every_line(body):
    result = raw.parse(body, CTX)
    handled = len(result.messages) + len(result.errors)
    lines = [ln for ln in body.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    assert handled == len(lines)
    for r in result.readings:
        assert r.value_text is not None or math.isfinite(r.value)


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=10),
                    lambda children: st.lists(children, max_size=3)
                    | st.dictionaries(st.text(max_size=8), children, max_size=4), max_leaves=20))
def test_json_parser_never_raises(doc):
    import json

    result = jsonp.parse(json.dumps(doc), CTX)
    assert len(result.messages) + len(result.errors) >= 1


def test_time_window_is_relative_to_the_request_clock():
    ctx = ParseContext(received_at=NOW - timedelta(days=10), default_device_id="d")
    assert raw.parse("ts:2026-11-23T00:00:00Z,a:1", ctx).errors


# ---- times the server assigns (issue 10) -------------------------------------------------

US = timedelta(microseconds=1)


@pytest.mark.parametrize("body, parser", [
    ("roll:5,alt:50\nroll:6,alt:60\n", raw),
    ('[{"roll": 5, "alt": 50}, {"roll": 6, "alt": 60}]', jsonp),
])
def test_messages_without_ts_get_distinct_times_in_body_order(body, parser):
    result = parser.parse(body, CTX)
    assert [[(r.metric, r.value, r.ts) for r in m.readings] for m in result.messages] == [
        [("roll", 5.0, NOW), ("alt", 50.0, NOW)], [("roll", 6.0, NOW + US), ("alt", 60.0, NOW + US)]]
    assert [m.server_time for m in result.messages] == [True, True]


def test_server_times_count_per_device_and_skip_messages_with_their_own_time():
    body = "a:1\ndevice_id:other,a:2\nts:2026-11-23T11:00:00Z,a:3\na:4\ndevice_id:other,a:5"
    result = raw.parse(body, CTX)
    got = [(r.device_id, r.ts, m.server_time) for m in result.messages for r in m.readings]
    assert got == [("dev1", NOW, True), ("other", NOW, True), ("dev1", datetime(2026, 11, 23, 11, tzinfo=UTC), False),
                   ("dev1", NOW + US, True), ("other", NOW + US, True)]


def test_the_clock_never_gives_a_device_the_same_microsecond_twice():
    from backend.ingest.parsing.server_time import ServerClock, assign_server_times

    clock = ServerClock()
    first = raw.parse("roll:5\nroll:6", CTX)
    second = raw.parse("roll:7", CTX)  # same time of receipt, to the microsecond
    other = raw.parse("device_id:d9,roll:8", CTX)
    assert assign_server_times(first.messages, NOW, clock) == 2
    assert assign_server_times(second.messages, NOW, clock) == 1
    assert assign_server_times(other.messages, NOW, clock) == 1
    assert [r.ts for r in first.readings + second.readings] == [NOW, NOW + US, NOW + 2 * US]
    assert other.readings[0].ts == NOW  # another device is not pushed along
    later = raw.parse("roll:9", ParseContext(received_at=NOW + timedelta(seconds=1), default_device_id="dev1"))
    assign_server_times(later.messages, NOW + timedelta(seconds=1), clock)
    assert later.readings[0].ts == NOW + timedelta(seconds=1)  # no drift once the clock has passed


def test_the_clock_stays_small_with_many_devices():
    from backend.ingest.parsing.server_time import ServerClock

    clock = ServerClock(max_devices=10)
    for n in range(50):
        clock.reserve(f"d{n}", 1, 1_000 + n)
    assert len(clock._last) <= 11


@pytest.mark.parametrize("body, parser, readings", [
    ("alt:nan,pitch:1", raw, 2),
    ("this is not telemetry", raw, 1),
    ("ts:2026-11-23T11:00:00Z", raw, 0),
    ("ts:1999-01-01T00:00:00Z,device_id:x,a:1,b:2,c:3", raw, 3),
    ('[{"alt": "nan", "gps": {"lat": 1, "lon": 2}, "ts": 1}]', jsonp, 3),
    ("[17]", jsonp, 1),
    ("{nope", jsonp, 0),
])
def test_a_refused_message_says_how_many_readings_it_carried(body, parser, readings):
    result = parser.parse(body, CTX)
    assert result.messages == [] and [e.readings for e in result.errors] == [readings]
