"""Rollups against raw rows, on real PostgreSQL through the real write path.

Random late, duplicate, conflicting and out-of-order writes (hypothesis) go in over HTTP
(small requests through telemetry_write(), large ones through COPY); then the rollup
tables must equal a GROUP BY over the stored raw rows once folded, and /telemetry/aggregate
must give the same answer from its rollup plan (rollup rows plus the tail not folded yet) as
from raw rows only and as a reference computed here in Python from the raw rows.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backend.store.rollups import merge_all
from tests.live_server import wait_for

RAW = {"Content-Type": "text/plain"}
T0 = datetime(2026, 3, 28, 20, tzinfo=UTC)  # two days around Berlin's spring DST change
SPAN_S = 2 * 86400
DEVICES = ("a", "b")
METRICS = ("alt", "pitch")
GRAINS = {"1m": "1 minute", "1h": "1 hour", "1d": "1 day"}


@pytest.fixture
def client(make_app):
    # No folds in the background: each test says what is folded and what stays in the tail.
    c = make_app(rollup_merge_interval_s=0).test_client()
    c.environ_base["HTTP_AUTHORIZATION"] = "Bearer test-admin-key"
    return c


def _reset(db) -> None:
    db.execute("TRUNCATE telemetry_readings, telemetry_rollup_1m, telemetry_rollup_1h, telemetry_rollup_1d,"
               " telemetry_quarantine, device_latest, telemetry_raw, stream_events, telemetry_rollup_cursor"
               " RESTART IDENTITY")


def _line(d: str, m: str, s: float, v: float) -> str:
    ts = (T0 + timedelta(seconds=s)).isoformat().replace("+00:00", "Z")
    return f"device_id:{d},ts:{ts},{m}:{v:g}"


def _post(client, lines: list[str]) -> None:
    r = client.post("/telemetry/parse", data="\n".join(lines), headers=RAW)
    assert r.status_code < 500, r.get_data(as_text=True)[:300]


reading = st.tuples(st.sampled_from(DEVICES), st.sampled_from(METRICS),
                    st.integers(0, SPAN_S * 2).map(lambda h: h / 2),  # half seconds
                    st.integers(-500, 500).map(lambda v: v / 2))
batches = st.lists(st.lists(reading, min_size=1, max_size=40), min_size=1, max_size=6)


def _rollup_tables(db, grain: str) -> list[tuple]:
    return db.execute(f"SELECT device_id, metric, bucket, count, sum, min, max, first_ts, first_value,"
                      f" last_ts, last_value FROM telemetry_rollup_{grain} ORDER BY 1, 2, 3").fetchall()


def _assert_rollups_equal_raw(db) -> None:
    merge_all(db)
    assert db.execute("SELECT count(*) FROM telemetry_unrolled").fetchone()[0] == 0
    for grain, interval in GRAINS.items():
        got = _rollup_tables(db, grain)
        want = db.execute(
            "SELECT device_id, metric, date_bin(%s::interval, ts, TIMESTAMPTZ '2000-01-01Z') b, count(*), sum(value),"
            " min(value), max(value), min(ts), (array_agg(value ORDER BY ts))[1], max(ts),"
            " (array_agg(value ORDER BY ts DESC))[1] FROM telemetry_readings WHERE value IS NOT NULL"
            " GROUP BY 1, 2, 3 ORDER BY 1, 2, 3", [interval]).fetchall()
        assert got == want, grain  # values are halves: sums are exact in float


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=batches, resend=st.lists(st.integers(0, 5), max_size=3), conflict=st.booleans(),
       big=st.booleans())
def test_rollups_equal_raw_after_random_writes(client, db, batches, resend, conflict, big):
    _reset(db)
    sent = []
    for batch in batches:
        lines = [_line(*r) for r in batch]
        _post(client, lines)
        sent.append(lines)
    for i in resend:  # a re-sent old batch: duplicates, nothing counted twice
        _post(client, sent[i % len(sent)])
    if conflict:  # same key, other value: quarantined, not counted
        d, m, s, v = batches[0][0]
        _post(client, [_line(d, m, s, v + 1000)])
        assert db.execute("SELECT count(*) FROM telemetry_quarantine").fetchone()[0] >= 1
    if big:  # >= 256 typed readings: the COPY path; then again (COPY fails, telemetry_write skips them)
        lines = [_line("c", "alt", 7 * i + 0.5, i % 17) for i in range(300)]
        _post(client, lines)
        _post(client, lines[::-1])
    _assert_rollups_equal_raw(db)
    _post(client, sent[0])  # after the fold: still nothing counted twice
    _assert_rollups_equal_raw(db)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.lists(st.floats(-1e300, 1e300), min_size=1, max_size=30))
def test_values_reach_the_rollups_exactly(client, db, values):
    # Through the log of committed readings (jsonb numbers) and back to float8, bit for bit.
    _reset(db)
    _post(client, [f"device_id:a,ts:{(T0 + timedelta(seconds=i)).isoformat()},alt:{v!r}" for i, v in enumerate(values)])
    merge_all(db)
    row = db.execute("SELECT min, max, first_value, last_value, count FROM telemetry_rollup_1d").fetchone()
    assert row == (min(values), max(values), values[0], values[-1], len(values))


def test_a_sum_beyond_float8_saturates_and_the_fold_goes_on(client, db):
    # Each reading is finite, their sum is not: the fold must not fail for ever.
    _reset(db)
    _post(client, [f"device_id:a,ts:{(T0 + timedelta(seconds=i)).isoformat()},alt:1.7e308" for i in range(3)])
    _post(client, [f"device_id:a,ts:{(T0 + timedelta(seconds=9)).isoformat()},pitch:2"])
    assert merge_all(db) == 4
    assert db.execute("SELECT metric, count, sum, max FROM telemetry_rollup_1m ORDER BY 1").fetchall() == [
        ("alt", 3, math.inf, 1.7e308), ("pitch", 1, 2.0, 2.0)]


@pytest.mark.parametrize("fold", [False, True])
def test_a_fleet_read_finds_the_edge_minutes_devices_in_the_tail(client, db, fold):
    # A fleet-wide rollup plan reads its ragged edges (within a minute) from raw rows of the
    # devices that minute has: those in its rollup row and, not folded yet, in the tail.
    _reset(db)
    _post(client, [_line(d, "alt", s, s) for d in DEVICES for s in range(0, 7200, 5)])
    if fold:
        merge_all(db)
    _post(client, [_line("c", "alt", s + 0.5, 1) for s in (10, 3590, 3610, 7150)])  # in the edge minutes
    params = {"metric": "alt", "bucket": "1h", "agg": "count", "group_by": "fleet",
              "start": (T0 + timedelta(seconds=7)).isoformat(), "end": (T0 + timedelta(seconds=7170)).isoformat()}
    auto = _answer(client, **params)
    assert auto["source"] != "raw"
    _same(_by_key(auto, True), _by_key(_answer(client, **params, source="raw"), True))
    assert sum(d["count"] for d in auto["data"]) == 2 * len(range(10, 7170, 5)) + 4


def test_the_workers_fold_in_the_background(make_app, db):
    _reset(db)
    c = make_app(rollup_merge_interval_s=0.1).test_client()
    c.environ_base["HTTP_AUTHORIZATION"] = "Bearer test-admin-key"
    _post(c, [_line("a", "alt", s, s) for s in range(0, 600, 7)])
    assert db.execute("SELECT count(*) FROM telemetry_readings").fetchone()[0] == len(range(0, 600, 7))
    wait_for(lambda: db.execute("SELECT count(*) FROM telemetry_unrolled").fetchone()[0] == 0, timeout=10)
    assert db.execute("SELECT sum(count) FROM telemetry_rollup_1h").fetchone()[0] == len(range(0, 600, 7))


def _reference(db, metric: str, bucket: str, agg: str, tz: str, start: datetime, end: datetime,
               fleet: bool) -> dict[tuple, tuple[float, int]]:
    rows = db.execute("SELECT device_id, ts, value FROM telemetry_readings WHERE metric = %s AND ts >= %s"
                      " AND ts < %s AND value IS NOT NULL ORDER BY ts, device_id", [metric, start, end]).fetchall()
    z = ZoneInfo(tz)
    fixed = {"1m": 60, "5m": 300, "1h": 3600, "6h": 21600, "10s": 10}
    epoch = datetime(2000, 1, 1, tzinfo=UTC)
    groups: dict[tuple, list[tuple[datetime, float]]] = {}
    for d, ts, v in rows:
        if bucket in fixed:
            step = timedelta(seconds=fixed[bucket])
            b = epoch + (ts - epoch) // step * step
        else:
            local = ts.astimezone(z).replace(hour=0, minute=0, second=0, microsecond=0)
            if bucket == "1w":
                local -= timedelta(days=local.weekday())
            elif bucket == "1mo":
                local = local.replace(day=1)
            b = local.replace(tzinfo=None).replace(tzinfo=z).astimezone(UTC)  # local midnight, its own offset
        groups.setdefault((b, None if fleet else d), []).append((ts, v))
    out = {}
    for key, vs in groups.items():
        values = [v for _, v in vs]
        out[key] = ({"avg": sum(values) / len(values), "sum": sum(values), "min": min(values), "max": max(values),
                     "count": len(values), "first": vs[0][1], "last": vs[-1][1]}[agg], len(values))
    return out


def _answer(client, **params) -> dict:
    r = client.get("/telemetry/aggregate", query_string=params)
    assert r.status_code == 200, r.get_data(as_text=True)[:300]
    return r.json


def _by_key(body: dict, fleet: bool) -> dict[tuple, tuple[float, int]]:
    return {(datetime.fromisoformat(d["bucket"]), None if fleet else d["device_id"]): (d["value"], d["count"])
            for d in body["data"]}


def _as_rows(body: dict) -> list[dict]:
    """layout=series regrouped as layout=rows gives them: an object per point, by bucket, device, metric."""
    assert body["layout"] == "series" and "data" not in body
    one_metric = len(body["metrics"]) == 1
    rows = []
    for s in body["series"]:
        assert len(s["buckets"]) == len(s["values"]) == len(s["counts"]) and s["buckets"] == sorted(s["buckets"])
        for i, bucket in enumerate(s["buckets"]):
            row = {"bucket": bucket}
            if "buckets_local" in s:
                row["bucket_local"] = s["buckets_local"][i]
            if "device_id" in s:
                row["device_id"] = s["device_id"]
            if not one_metric:
                row["metric"] = s["metric"]
            rows.append({**row, "value": s["values"][i], "count": s["counts"][i]})
    rows.sort(key=lambda r: (r["bucket"], r.get("device_id") or "", r.get("metric") or ""))
    assert body["count"] == len(rows)
    return rows


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k][1] == b[k][1], k
        assert math.isclose(a[k][0], b[k][0], rel_tol=1e-9, abs_tol=1e-9), (k, a[k], b[k])


query = st.tuples(st.sampled_from(["1m", "5m", "1h", "6h", "1d", "1w", "1mo", "10s"]),
                  st.sampled_from(["avg", "sum", "min", "max", "count", "first", "last"]),
                  st.sampled_from(["UTC", "Europe/Berlin", "Asia/Kolkata"]),
                  st.integers(-3600 * 10**6, SPAN_S * 10**6), st.integers(1, SPAN_S * 10**6 + 7200 * 10**6),
                  st.booleans())


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=batches, queries=st.lists(query, min_size=1, max_size=6), folded=st.integers(0, 6))
def test_aggregate_from_rollups_equals_raw(client, db, batches, queries, folded):
    _reset(db)
    for i, batch in enumerate(batches):
        if i == folded:  # the first batches in the rollups, the rest in the tail not folded yet
            merge_all(db)
        _post(client, [_line(*r) for r in batch])
    _post(client, [_line(*r) for r in batches[-1]])  # a duplicate batch
    for bucket, agg, tz, a_us, len_us, fleet in queries:
        start = T0 + timedelta(microseconds=a_us)
        end = start + timedelta(microseconds=len_us)
        params = {"metric": "alt", "bucket": bucket, "agg": agg, "tz": tz, "start": start.isoformat(),
                  "end": end.isoformat(), "group_by": "fleet" if fleet else "device"}
        auto = _answer(client, **params)
        raw = _answer(client, **params, source="raw")
        assert raw["source"] == "raw"
        # The same points as arrays per series, from the same plan (PostgreSQL groups them).
        series = _answer(client, **params, layout="series")
        assert series["source"] == auto["source"] and _as_rows(series) == auto["data"]
        want = _reference(db, "alt", bucket, agg, tz, start, end, fleet)
        _same(_by_key(auto, fleet), want)
        _same(_by_key(raw, fleet), want)


def test_the_answer_says_which_rollup_it_used(client, db):
    _reset(db)
    end = datetime(2026, 11, 23, 10, 17, 3, tzinfo=UTC)
    lines = [f"device_id:a,ts:{(end - timedelta(hours=h)).isoformat()},alt:{h}" for h in range(0, 24 * 400, 7)]
    for i in range(0, len(lines), 200):
        if i == 600:
            merge_all(db)  # the older part folded, the rest in the tail: both halves of each read
        _post(client, lines[i:i + 200])
    cases = [("1m", timedelta(hours=24), "UTC", "rollup_1m"), ("1h", timedelta(days=30), "UTC", "rollup_1h"),
             ("1d", timedelta(days=365), "UTC", "rollup_1d"), ("1d", timedelta(days=365), "Europe/Berlin", "rollup_1h"),
             ("1w", timedelta(days=90), "Asia/Kolkata", "rollup_1m"), ("10s", timedelta(hours=2), "UTC", "raw")]
    for bucket, span, tz, source in cases:
        params = {"metric": "alt", "device_id": "a", "bucket": bucket, "tz": tz, "agg": "sum",
                  "start": (end - span).isoformat(), "end": end.isoformat()}
        body = _answer(client, **params)
        assert body["source"] == source, (bucket, tz)
        raw = _answer(client, **params, source="raw")
        assert body["data"] == raw["data"]
        assert sum(d["count"] for d in body["data"]) == sum(1 for h in range(0, 24 * 400, 7)
                                                              if timedelta(hours=h) <= span and h > 0)


@pytest.mark.parametrize("day, hours", [("2026-03-29", 23), ("2026-10-25", 25), ("2026-06-01", 24)])
def test_berlin_dst_days_have_23_and_25_hourly_buckets(client, db, day, hours):
    _reset(db)
    z = ZoneInfo("Europe/Berlin")
    midnight = datetime.fromisoformat(day).replace(tzinfo=z)
    start, end = midnight.astimezone(UTC) - timedelta(hours=3), midnight.astimezone(UTC) + timedelta(hours=30)
    lines, t = [], start
    while t < end:
        lines.append(f"device_id:a,ts:{t.isoformat()},alt:1")
        t += timedelta(minutes=10)
    _post(client, lines)
    next_midnight = (midnight + timedelta(days=1, hours=2)).replace(hour=0).astimezone(UTC)
    body = _answer(client, metric="alt", device_id="a", bucket="1h", tz="Europe/Berlin",
                   start=midnight.isoformat(), end=next_midnight.isoformat())
    assert len(body["data"]) == hours and all(d["count"] == 6 for d in body["data"])
    days = _answer(client, metric="alt", device_id="a", bucket="1d", tz="Europe/Berlin", agg="count",
                   start=start.isoformat(), end=end.isoformat())
    assert days["source"] == "rollup_1h"
    local = {d["bucket_local"][:10]: d["count"] for d in days["data"]}
    assert local[day] == hours * 6
    assert {d["bucket_local"][10:] for d in days["data"]} <= {"T00:00:00+01:00", "T00:00:00+02:00"}


def test_unknown_tz_and_bad_parameters_are_400(client, db):
    r = client.get("/telemetry/aggregate?metric=alt&tz=Mars/Olympus")
    assert r.status_code == 400 and "tz" in r.json["error"] and "Mars/Olympus" in r.json["error"]
    for qs, name in [("fill=zero", "fill"), ("layout=columns", "layout"), ("downsample=1", "downsample"), ("group_by=site", "group_by"),
                     ("bucket=2d", "bucket"), ("fill=null&bucket=1s&start=2020-01-01&end=2026-01-01", "fill")]:
        r = client.get("/telemetry/aggregate?metric=alt&" + qs)
        assert r.status_code == 400 and r.json["error"].startswith(name), (qs, r.json)
    assert client.get("/telemetry/aggregate").status_code == 400


def test_several_metrics_devices_fill_and_downsample(client, db):
    _reset(db)
    lines = []
    for m in range(0, 60, 2):  # every other minute: gaps to fill
        ts = (T0 + timedelta(minutes=m)).isoformat()
        lines += [f"device_id:a,ts:{ts},alt:{m}", f"device_id:b,ts:{ts},alt:{2 * m}",
                  f"device_id:a,ts:{ts},pitch:{-m}"]
    _post(client, lines)
    span = {"start": T0.isoformat(), "end": (T0 + timedelta(minutes=60)).isoformat()}
    body = _answer(client, metric="alt,pitch", device_id="a,b", bucket="1m", fill="linear", **span)
    series = {}
    for d in body["data"]:
        series.setdefault((d["device_id"], d["metric"]), []).append(d["value"])
    assert set(series) == {("a", "alt"), ("b", "alt"), ("a", "pitch"), ("b", "pitch")}
    assert series[("a", "alt")][:4] == [0, 1, 2, 3] and len(series[("a", "alt")]) == 60
    assert series[("b", "pitch")] == [None] * 60  # asked for, never sent
    fleet = _answer(client, metric="alt", group_by="fleet", bucket="1m", agg="sum", fill="previous", **span)
    assert [d["value"] for d in fleet["data"]][:4] == [0, 0, 6, 6] and "device_id" not in fleet["data"][0]
    down = _answer(client, metric="alt", device_id="a", bucket="1m", downsample=5, **span)
    assert [d["bucket"][11:16] for d in down["data"]][0] == "20:00" and len(down["data"]) == 5
    for params in ({"metric": "alt,pitch", "device_id": "a,b", "fill": "linear"},
                   {"metric": "alt", "group_by": "fleet", "agg": "sum", "fill": "previous"},
                   {"metric": "alt", "device_id": "a", "downsample": 5},
                   {"metric": "alt,pitch", "tz": "Europe/Berlin"}):
        rows = _answer(client, bucket="1m", **params, **span)
        series = _answer(client, bucket="1m", layout="series", **params, **span)
        assert _as_rows(series) == rows["data"], params
    filled = _answer(client, metric="alt,pitch", device_id="a,b", bucket="1m", fill="null", layout="series", **span)
    assert [(s["device_id"], s["metric"]) for s in filled["series"]] == [
        ("a", "alt"), ("a", "pitch"), ("b", "alt"), ("b", "pitch")]
    assert filled["series"][3]["values"] == [None] * 60 and len(filled["series"][3]["buckets"]) == 60
