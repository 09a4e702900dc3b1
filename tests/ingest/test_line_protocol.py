"""The line-protocol parser (backend/ingest/parsing/line_protocol.py): syntax, mapping, fuzzing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backend.ingest.parsing import ParseContext
from backend.ingest.parsing.line_protocol import LineProtocolParser
from backend.ingest.parsing.lp_syntax import _slow, escape_key, escape_measurement, escape_string, scan_line

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
CTX = ParseContext(received_at=NOW)
LP = LineProtocolParser()


def parse(body: str, **kw) -> tuple[list, list]:
    r = LineProtocolParser(**kw).parse(body, CTX) if kw else LP.parse(body, CTX)
    return [x for m in r.messages for x in m.readings], r.errors


def test_every_value_type_and_escapes() -> None:
    body = ('cpu,host=server01,region=us\\ west idle=98.5,user=1.2e-1,n=-5i,u=7u,up=t,down=FALSE,'
            'name="a \\"quoted\\" \\\\ back, with = and space" 1780315200123456789')
    readings, errors = parse(body)
    assert not errors
    got = {r.metric: (r.value, r.value_text) for r in readings}
    assert got == {"cpu.idle": (98.5, None), "cpu.user": (0.12, None), "cpu.n": (-5.0, None),
                   "cpu.u": (7.0, None), "cpu.up": (1.0, None), "cpu.down": (0.0, None),
                   "cpu.name": (None, 'a "quoted" \\ back, with = and space')}
    assert {r.device_id for r in readings} == {"server01"}
    assert readings[0].ts == datetime(2026, 6, 1, 12, 0, 0, 123456, tzinfo=UTC)  # ns below the µs dropped
    meta = LP.parse(body, CTX).device_metadata
    assert meta == {"server01": {"region": "us west"}}


@pytest.mark.parametrize("word,value", [(w, 1.0) for w in ("t", "T", "true", "True", "TRUE")]
                         + [(w, 0.0) for w in ("f", "F", "false", "False", "FALSE")])
def test_booleans(word: str, value: float) -> None:
    readings, errors = parse(f"m,host=h b={word} 1780315200", precision="s")
    assert not errors and readings[0].value == value


@pytest.mark.parametrize("text,value", [("1", 1.0), ("-1.5", -1.5), ("1e3", 1000.0), ("1.5E-2", 0.015),
                                        (".5", 0.5), ("3.", 3.0), ("-0", 0.0), ("9007199254740992i", 2.0**53)])
def test_numbers(text: str, value: float) -> None:
    readings, errors = parse(f"m,host=h v={text}")
    assert not errors and readings[0].value == value


@pytest.mark.parametrize("line,why", [
    ("m,host=h v=nan", "invalid field value"), ("m,host=h v=inf", "invalid field value"),
    ("m,host=h v=1e999", "not a finite number"), ("m,host=h v=12x", "invalid field value"),
    ("m,host=h v=", "missing field value"), ("m,host=h", "missing fields"), ("m,host=h v=-1u", "invalid field"),
    ("m,host=h v=9007199254740993i", "2^53"), ("m,host=h v=9223372036854775808i", "int64"),
    ("m,host=h v=18446744073709551616u", "uint64"), ('m,host=h v="open', "unterminated string"),
    ("m,host= v=1", "missing tag value"), ("m,=x v=1", "tag"), ("m v=1", "no device"),
    ("m,host=h v=1 12.5", "invalid timestamp"), ("m,host=h v=1 5", "before 2000"),
    ("m,host=h v=1,v=2", "appears twice"), (",host=h v=1", "missing measurement"),
    ("m,host=h v=1 1780315200000000000 extra", "invalid timestamp"), ('m,host=h v="a"x', "unexpected"),
    ("m,host=h bad\\ name=1", "characters outside"), ("m,host=a\\ b v=1", "device_id"),
])
def test_errors_name_the_line_and_why(line: str, why: str) -> None:
    readings, errors = parse("m,host=ok v=1 1780315200000000000\n" + line + "\nm,host=ok w=2 1780315200000000000")
    assert [r.metric for r in readings] == ["m.v", "m.w"]  # the good lines are kept
    assert len(errors) == 1 and errors[0].position == 2, errors
    assert why in errors[0].reason, errors[0].reason


def test_device_tag_order_default_and_configurable() -> None:
    assert parse("m,host=h,device_id=d v=1")[0][0].device_id == "d"  # device_id before host
    assert parse("m,host=h v=1")[0][0].device_id == "h"
    assert parse("m,site=s v=1", device_tags=("site",))[0][0].device_id == "s"
    r = LP.parse("m v=1", ParseContext(received_at=NOW, default_device_id="fallback"))
    assert r.messages[0].readings[0].device_id == "fallback"
    assert parse("m,host=h v=1", metric_style="field")[0][0].metric == "v"


@pytest.mark.parametrize("precision,ts,expected", [
    ("ns", "1780315200123456789", datetime(2026, 6, 1, 12, 0, 0, 123456, tzinfo=UTC)),
    ("us", "1780315200123456", datetime(2026, 6, 1, 12, 0, 0, 123456, tzinfo=UTC)),
    ("ms", "1780315200123", datetime(2026, 6, 1, 12, 0, 0, 123000, tzinfo=UTC)),
    ("s", "1780315200", datetime(2026, 6, 1, 12, 0, tzinfo=UTC)),
    ("m", "29671920", datetime(2026, 6, 1, 12, 0, tzinfo=UTC)),
    ("h", "494532", datetime(2026, 6, 1, 12, 0, tzinfo=UTC)),
])
def test_precisions(precision: str, ts: str, expected: datetime) -> None:
    readings, errors = parse(f"m,host=h v=1 {ts}", precision=precision)
    assert not errors and readings[0].ts == expected


def test_lines_without_time_get_distinct_server_times() -> None:
    r = LP.parse("m,host=h v=1\nm,host=h v=2\nm,host=g v=3\n# comment\n\n", CTX)
    times = [m.readings[0].ts for m in r.messages]
    assert times == [NOW, NOW + timedelta(microseconds=1), NOW] and all(m.server_time for m in r.messages)


def test_crlf_and_too_many_lines() -> None:
    assert parse("m,host=h v=1\r\nm,host=h w=2\r\n")[1] == []
    r = LP.parse("m,host=h v=1\n" * 5, ParseContext(received_at=NOW, max_messages=3))
    assert len(r.messages) == 3 and r.errors[0].position == 4 and "more than 3" in r.errors[0].reason


# ---- properties -----------------------------------------------------------------------------

# Names may hold every special character; a backslash only where it cannot read as an escape
# (InfluxDB's own format has that ambiguity: `a\` followed by a separator).
_text = st.text(st.characters(codec="utf-8", exclude_characters="\n\r\\\x00"), min_size=1, max_size=12)
_value = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False).map(repr).map(lambda s: s if "e" in s or "." in s else s + ".0"),
    st.integers(-(2**53), 2**53).map(lambda n: f"{n}i"),
    st.integers(0, 2**53).map(lambda n: f"{n}u"),
    st.sampled_from(["t", "F", "true", "FALSE"]),
    st.text(st.characters(codec="utf-8", exclude_characters="\n\r\x00"), max_size=20).map(escape_string),
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(measurement=_text.filter(lambda s: not s.startswith("#") and s.strip(" \t") == s),
       tags=st.lists(st.tuples(_text, _text), max_size=4),
       fields=st.lists(st.tuples(_text, _value), min_size=1, max_size=4),
       ts=st.one_of(st.none(), st.integers(0, 2**62).map(str)))
def test_scan_round_trip(measurement: str, tags: list, fields: list, ts: str | None) -> None:
    line = escape_measurement(measurement)
    line += "".join(f",{escape_key(k)}={escape_key(v)}" for k, v in tags)
    line += " " + ",".join(f"{escape_key(k)}={v}" for k, v in fields)
    if ts is not None:
        line += " " + ts
    m, t, f, got_ts = scan_line(line)
    assert m == measurement and t == tags and got_ts == ts
    assert f == [(k, _string_of(v), True) if v.startswith('"') else (k, v, False) for k, v in fields]


def _string_of(quoted: str) -> str:
    out, i = [], 1
    while i < len(quoted) - 1:
        if quoted[i] == "\\" and quoted[i + 1] in '"\\':
            out.append(quoted[i + 1])
            i += 2
        else:
            out.append(quoted[i])
            i += 1
    return "".join(out)


@settings(max_examples=300)
@given(st.text(st.characters(codec="utf-8", exclude_characters="\\\""), max_size=60))
def test_fast_path_agrees_with_the_scanner(line: str) -> None:
    fast = _result(lambda: scan_line(line))
    slow = _result(lambda: _slow(line))
    assert fast == slow if not isinstance(slow, str) else isinstance(fast, str)


def _result(fn):
    try:
        return fn()
    except ValueError as exc:
        return str(exc)


@settings(max_examples=500)
@given(st.lists(st.sampled_from([*'m,=h "\\ .-_0123456789eiutf#\n\tx', "host=", "v=", "1780315200"]),
                max_size=60).map("".join))
def test_fuzz_never_raises_and_every_error_names_its_line(body: str) -> None:
    for precision in ("ns", "s"):
        r = LineProtocolParser(precision=precision).parse(body, CTX)
        lines = body.split("\n")
        for e in r.errors:
            assert 1 <= e.position <= len(lines) and e.reason
        for m in r.messages:
            assert m.readings and 1 <= m.position <= len(lines)
            for x in m.readings:
                assert (x.value is None) != (x.value_text is None)


_simple_line = st.builds(
    lambda m, tags, fields, ts: f"{m}{tags} {fields}{ts}",
    st.sampled_from(["m", "cpu", "", "a.b"]),
    st.sampled_from(["", ",host=h1", ",device_id=d1,host=h2", ",site=s,host=h1", ",host=", ",host=bad id", ",x"]),
    st.lists(st.tuples(st.sampled_from(["v", "w", "bad name", ""]),
                       st.sampled_from(["1", "-2.5", "1e3", "1e999", "7i", "t", "1_0", "\u0661", ".5", "3.", "-"])),
             min_size=1, max_size=3).map(lambda fs: ",".join(f"{k}={v}" for k, v in fs)),
    st.sampled_from([" 1780315200000000000", " 5", "", " 1780315200000000000 ", " x", " 99999999999999999999"]),
)


@settings(max_examples=400)
@given(st.lists(_simple_line, max_size=10).map("\n".join), st.sampled_from([None, "dflt"]))
def test_fast_path_gives_the_general_paths_answer(body: str, default: str | None) -> None:
    ctx = ParseContext(received_at=NOW, default_device_id=default)
    fast, slow = LineProtocolParser().parse(body, ctx), LineProtocolParser(fast=False).parse(body, ctx)
    assert fast.messages == slow.messages
    assert [m.server_time for m in fast.messages] == [m.server_time for m in slow.messages]
    assert fast.errors == slow.errors and fast.device_metadata == slow.device_metadata
