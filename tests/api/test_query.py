"""Reading telemetry back: filters, order, pagination, wide pivot, buckets, injection."""

from __future__ import annotations

import re

import pytest

from tests.live_server import wait_for

RAW = {"Content-Type": "text/plain"}


@pytest.fixture
def loaded(client, db):
    lines = []
    for i in range(10):
        lines.append(f"device_id:a,ts:2026-11-23T10:00:{i:02d}Z,alt:{i},pitch:{-i},mode:M{i % 2}")
        lines.append(f"device_id:b,ts:2026-11-23T10:00:{i:02d}Z,alt:{100 + i}")
    r = client.post("/telemetry/parse", data="\n".join(lines), headers=RAW)
    assert r.status_code == 200 and r.json["accepted"] == 40
    return client


def test_default_query_is_seed_shaped(loaded):
    body = loaded.get("/telemetry/query").json
    assert body["success"] is True and body["count"] == 40 and body["limit"] == 100 and body["offset"] == 0
    first = body["data"][0]
    assert set(first) == {"device_id", "metric", "ts", "value", "created_at"}
    assert first["ts"] == "2026-11-23T10:00:09Z"


def test_filters_order_and_pages(loaded):
    q = loaded.get("/telemetry/query?device_id=a&metric=alt&order_by=ts&desc=false&limit=3&offset=2").json
    assert [(d["ts"][-3:], d["value"]) for d in q["data"]] == [("02Z", 2), ("03Z", 3), ("04Z", 4)]
    q = loaded.get("/telemetry/query?device_id=b&start=2026-11-23T10:00:05Z&end=2026-11-23T10:00:07Z").json
    assert [d["value"] for d in q["data"]] == [106, 105]
    q = loaded.get("/telemetry/query?metric=mode&device_id=a&limit=2").json
    assert [d["value"] for d in q["data"]] == ["M1", "M0"]
    q = loaded.get("/telemetry/query?metric=alt&order_by=value&desc=true&limit=1").json
    assert q["data"][0]["value"] == 109


def test_wide_format_pivots_like_seed_rows(loaded):
    q = loaded.get("/telemetry/query?format=wide&device_id=a&limit=2").json
    assert q["count"] == 2
    assert q["data"][0] == {"device_id": "a", "ts": "2026-11-23T10:00:09Z",
                            "created_at": q["data"][0]["created_at"], "alt": 9, "pitch": -9, "mode": "M1"}


@pytest.mark.parametrize("params", [
    "order_by=ts;DROP TABLE telemetry_readings",
    "order_by=value)--",
    "order_by=pg_sleep(1)",
    "limit=0", "limit=abc", "limit=100001", "offset=-1", "desc=maybe",
    "start=not-a-time", "start=2026-11-24T00:00:00Z&end=2026-11-23T00:00:00Z",
])
def test_bad_parameters_are_400(loaded, db, params):
    r = loaded.get("/telemetry/query?" + params)
    assert r.status_code == 400, r.json
    assert r.json["success"] is False and r.json["error"]
    assert db.execute("SELECT count(*) FROM telemetry_readings").fetchone() == (40,)


def test_time_buckets(loaded):
    q = loaded.get("/telemetry/aggregate?metric=alt&device_id=a&bucket=10s&agg=avg"
                   "&start=2026-11-23T10:00:00Z&end=2026-11-23T10:01:00Z").json
    assert q["data"] == [{"bucket": "2026-11-23T10:00:00Z", "device_id": "a", "value": 4.5, "count": 10}]
    q = loaded.get("/telemetry/aggregate?metric=alt&bucket=1m&agg=max"
                   "&start=2026-11-23T10:00:00Z&end=2026-11-23T10:01:00Z").json
    assert [(d["device_id"], d["value"]) for d in q["data"]] == [("a", 9.0), ("b", 109.0)]
    assert loaded.get("/telemetry/aggregate?metric=alt&bucket=7m").status_code == 400
    assert loaded.get("/telemetry/aggregate?bucket=1m").status_code == 400


def _reference(db, where: str, params: list, order: str, limit: int, offset: int) -> list[tuple]:
    # The plain query over the whole table: what the series-by-series reads must equal.
    return db.execute("SELECT device_id, metric, ts, value, value_text FROM telemetry_readings"
                      f" WHERE {where} ORDER BY {order} LIMIT %s OFFSET %s", [*params, limit, offset]).fetchall()


@pytest.mark.parametrize("qs, where, params, order", [
    ("device_id=a", "device_id = 'a'", [], "ts DESC, device_id, metric"),
    ("device_id=a,b&limit=7&offset=5", "device_id IN ('a','b')", [], "ts DESC, device_id, metric"),
    ("device_id=b&limit=3&offset=4", "device_id = 'b'", [], "ts DESC, device_id, metric"),
    ("device_id=a,b&desc=false&limit=9&offset=3", "device_id IN ('a','b')", [], "ts ASC, device_id, metric"),
    ("device_id=a&metric=alt,mode&limit=5", "device_id = 'a' AND metric IN ('alt','mode')", [],
     "ts DESC, device_id, metric"),
    ("device_id=b,a,nobody&start=2026-11-23T10:00:03Z&end=2026-11-23T10:00:08Z&limit=4&offset=2",
     "device_id IN ('a','b') AND ts >= '2026-11-23T10:00:03Z' AND ts < '2026-11-23T10:00:08Z'", [],
     "ts DESC, device_id, metric"),
    ("device_id=a&order_by=value&desc=false&limit=4", "device_id = 'a'", [], "value ASC, device_id, metric"),
])
def test_device_queries_read_per_series_and_match_the_plain_query(loaded, db, qs, where, params, order):
    # Readings of given devices come series by series from the unique key (no (device, ts)
    # index); every page must be exactly the page the plain ordered query gives.
    q = loaded.get("/telemetry/query?" + qs).json
    limit = int(dict(p.split("=") for p in qs.split("&")).get("limit", 100))
    offset = int(dict(p.split("=") for p in qs.split("&")).get("offset", 0))
    want = _reference(db, where, params, order, limit, offset)
    got = [(d["device_id"], d["metric"], d["ts"]) for d in q["data"]]
    assert got == [(d, m, t.isoformat().replace("+00:00", "Z")) for d, m, t, _, _ in want]
    assert got  # every case has rows, so an empty answer cannot pass


def test_wide_rows_per_series_match_grouping_the_whole_table(loaded, db):
    q = loaded.get("/telemetry/query?format=wide&device_id=a,b&limit=5&offset=3").json
    want = db.execute("SELECT device_id, ts FROM telemetry_readings WHERE device_id IN ('a','b')"
                      " GROUP BY 1, 2 ORDER BY ts DESC, device_id LIMIT 5 OFFSET 3").fetchall()
    assert [(r["device_id"], r["ts"]) for r in q["data"]] == [
        (d, t.isoformat().replace("+00:00", "Z")) for d, t in want]
    a = next(r for r in q["data"] if r["device_id"] == "a")
    assert set(a) == {"device_id", "ts", "created_at", "alt", "pitch", "mode"}  # every series of the row


def test_readings_stored_outside_the_write_path_are_found(loaded, db):
    # Metrics are found from the readings themselves, not from device_latest.
    db.execute("INSERT INTO telemetry_readings (device_id, metric, ts, value) VALUES"
               " ('a', 'imported', '2026-11-23T10:00:30Z', 1.5)")
    q = loaded.get("/telemetry/query?device_id=a&limit=1").json
    assert [(d["metric"], d["value"]) for d in q["data"]] == [("imported", 1.5)]


def test_one_name_for_the_arrival_time_in_plain_and_wide_rows(loaded, db):
    # Seed 001's rows and default order_by call it created_at; plain rows said received_at.
    db.execute("UPDATE telemetry_readings SET received_at = ts + (value * interval '1 minute')"
               " WHERE metric = 'alt' AND device_id = 'a'")
    for fmt in ("narrow", "wide"):
        q = loaded.get(f"/telemetry/query?format={fmt}&device_id=a&metric=alt&order_by=created_at&desc=true&limit=3")
        assert q.status_code == 200, q.json
        rows = q.json["data"]
        assert q.json["order_by"] == "created_at" and all("received_at" not in r for r in rows)
        assert [r["created_at"] for r in rows] == ["2026-11-23T10:09:09Z", "2026-11-23T10:08:08Z",
                                                   "2026-11-23T10:07:07Z"], fmt
    # the old names still sort, and the answer names the field it sorted by
    q = loaded.get("/telemetry/query?metric=alt&device_id=a&order_by=received_at&limit=1").json
    assert q["order_by"] == "created_at" and q["data"][0]["created_at"] == "2026-11-23T10:09:09Z"
    assert loaded.get("/telemetry/query?order_by=timestamp&limit=1").json["order_by"] == "ts"


@pytest.mark.parametrize("path, param", [
    ("/telemetry/query?tz=Europe/Berlin", "tz"),
    ("/telemetry/query?samples=20", "samples"),  # downsample is known since issue 14
    ("/telemetry/query?devce_id=a", "devce_id"),
    ("/telemetry/aggregate?metric=alt&device=a", "device"),
    ("/api/flow-data?device=n1", "device"),
    ("/api/telemetry?hour=1", "hour"),
    ("/api/signals?device=a", "device"),
    ("/api/devices?state=online", "state"),
    ("/api/alerts?resolved=false", "resolved"),
    ("/api/keys?revoked=false", "revoked"),
    ("/config?x=1", "x"),
    ("/telemetry/batch/status?verbose=1", "verbose"),
])
def test_unknown_parameter_is_400_naming_it_and_the_accepted_ones(loaded, path, param):
    r = loaded.get(path)
    assert r.status_code == 400, r.json
    body = r.json
    assert body["parameter"] == param and f"unknown parameter {param!r}" in body["error"]
    assert isinstance(body["accepted"], list)
    for name in body["accepted"]:
        assert name in body["error"]


def test_unknown_parameter_answer_suggests_the_near_name(loaded):
    body = loaded.get("/telemetry/query?devce_id=a").json
    assert "did you mean device_id?" in body["error"]
    assert {"device_id", "metric", "start", "end", "limit", "order_by"} <= set(body["accepted"])


@pytest.mark.parametrize("params", [
    "limit=1&limit=2", "start=2026-11-23T10:00:00Z&start_time=2026-11-23T10:00:00Z", "format=csv",
])
def test_ambiguous_or_unknown_values_are_400(loaded, params):
    r = loaded.get("/telemetry/query?" + params)
    assert r.status_code == 400 and r.json["parameter"] in params, r.json


@pytest.mark.parametrize("path", [
    "/telemetry/query?device_id=%00", "/telemetry/query?metric=%00", "/telemetry/query?metric=alt%00x",
    "/telemetry/query?device_id=a%0A", "/telemetry/query?start=2026-11-23%00",
    "/telemetry/aggregate?metric=%00", "/telemetry/aggregate?metric=alt&device_id=%00",
    "/api/flow-data?device_id=%00", "/api/telemetry?device_id=%00", "/api/telemetry?signal=%00",
    "/api/signals?device_id=%00", "/api/alerts?device_id=%00", "/api/devices/%00", "/api/devices/a%0Ab",
])
def test_control_characters_in_text_parameters_are_400(loaded, db, path):
    r = loaded.get(path)
    assert r.status_code == 400, (r.status_code, r.get_data(as_text=True)[:300])
    assert "control character" in r.json["error"]
    assert db.execute("SELECT count(*) FROM telemetry_readings").fetchone() == (40,)


@pytest.mark.parametrize("path", [
    "/telemetry/query?hours=inf", "/telemetry/query?hours=-inf", "/telemetry/query?hours=nan",
    "/telemetry/query?hours=-1", "/telemetry/query?hours=0", "/api/telemetry?hours=inf", "/api/telemetry?hours=1e20",
    "/api/telemetry?hours=nan",
])
def test_non_finite_and_out_of_range_numbers_are_400(loaded, path):
    r = loaded.get(path)
    assert r.status_code == 400 and r.json["parameter"] == "hours", r.get_data(as_text=True)[:300]


@pytest.mark.parametrize("path, count", [
    # Bounds beyond the calendar's ends are clamped to them: a meaningful, empty or full, range.
    ("/telemetry/query?hours=1e20", 40),
    ("/telemetry/query?hours=1e300", 40),
    ("/telemetry/query?end=0001-01-01", 0),
    ("/telemetry/query?end=0001-01-01T00:00:00%2B14:00", 0),
    ("/telemetry/query?start=0001-01-01T00:00:00%2B14:00", 40),
    ("/telemetry/query?end_time=9999-12-31T23:59:59.999999", 40),
    ("/telemetry/query?start=9999-12-31T23:59:59.999999-14:00", 0),
    ("/telemetry/query?end=99999999999999999999", 40),
    ("/telemetry/query?device_id=a&end=0001-01-01T00:00:00%2B14:00", 0),
    ("/api/flow-data?end_time=9999-12-31T23:59:59.999999", 20),
    ("/api/flow-data?end_time=0001-01-01T00:00:00%2B14:00", 0),
    ("/api/flow-data?device_id=a&end_time=9999-12-31T23:59:59.999999%2B00:00", 10),
])
def test_times_at_the_calendar_edges_are_clamped(loaded, path, count):
    r = loaded.get(path)
    assert r.status_code == 200, r.get_data(as_text=True)[:300]
    assert r.json["count"] == count


@pytest.mark.parametrize("qs, start, end", [
    ("end=0001-01-01", "0001-01-01T00:00:00Z", "0001-01-01T00:00:00Z"),
    ("end=0001-01-01T00:00:00%2B14:00", "0001-01-01T00:00:00Z", "0001-01-01T00:00:00Z"),
    ("start=0001-01-01T00:00:00%2B14:00&end=9999-12-31T23:59:59.999999-14:00",
     "0001-01-01T00:00:00Z", "9999-12-31T23:59:59.999999Z"),
    ("start=2026-11-23T12:00:00%2B02:00&end=2026-11-23T12:01:00%2B02:00", "2026-11-23T10:00:00Z",
     "2026-11-23T10:01:00Z"),
])
def test_aggregate_bounds_at_the_edges_and_in_utc(loaded, qs, start, end):
    r = loaded.get("/telemetry/aggregate?metric=alt&bucket=1d&" + qs)
    assert r.status_code == 200, r.get_data(as_text=True)[:300]
    assert (r.json["start"], r.json["end"]) == (start, end)
    assert sum(d["count"] for d in r.json["data"]) == (20 if start.startswith("2026") or end.startswith("9999") else 0)


def test_long_lists_of_ids_are_not_one_long_text(loaded):
    many = ",".join(f"device-{i:03d}" for i in range(200)) + ",a"
    r = loaded.get("/telemetry/query", query_string={"device_id": many, "limit": 1})
    assert r.status_code == 200 and r.json["data"][0]["device_id"] == "a"
    assert loaded.get("/telemetry/query", query_string={"device_id": "x" * 129}).status_code == 400


def test_a_failed_read_does_not_speak_of_storing(make_app, db_proxy):
    app = make_app(database_url=db_proxy.url)

    @app.get("/test-only/broken-read")
    def broken_read():
        raise RuntimeError("a bug in a read")

    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = "Bearer test-admin-key"
    r = client.get("/test-only/broken-read")
    assert r.status_code == 500 and "stored" not in r.json["error"] and "read" in r.json["error"], r.json
    db_proxy.down()
    r = client.get("/telemetry/query?limit=1")
    assert r.status_code == 503 and r.headers["Retry-After"], r.json
    assert r.json["error"] == "database unavailable; nothing was read, retry later"


TIME_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d")


def _times(value, path=""):
    """(where, text) of every time-shaped string in a JSON answer."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _times(v, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _times(v, f"{path}[{i}]")
    elif isinstance(value, str) and TIME_RE.match(value):
        yield path, value


def test_every_time_in_every_answer_ends_in_z(make_app, db_proxy):
    # An outage and its replay first, so the circuit's and the spool's times are set too.
    app = make_app(database_url=db_proxy.url)
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = "Bearer test-admin-key"
    db_proxy.down()
    r = client.post("/telemetry/parse", data="device_id:z1,ts:2026-11-23T10:00:00+02:00,alt:1", headers=RAW)
    assert r.status_code == 200 and r.json["durability"] == "spooled", r.json
    db_proxy.up()
    wait_for(lambda: client.get("/telemetry/batch/status").json["circuit"]["state"] == "closed", timeout=30)
    r = client.post("/telemetry/parse", data="device_id:z1,ts:2026-11-23T11:00:00+02:00,alt:2", headers=RAW)
    assert r.status_code == 200 and r.json["durability"] == "committed", r.json
    answers = {"POST /telemetry/parse": r.json}
    assert r.json["parsed_data"]["ts"] == "2026-11-23T09:00:00Z"
    assert wait_for(lambda: client.get("/telemetry/query?device_id=z1").json["count"] == 2, timeout=30)
    for rule in app.url_map.iter_rules():
        if "GET" not in rule.methods or rule.endpoint == "static":
            continue
        url = rule.rule.replace("<device_id>", "z1")
        query = {"metric": "alt", "start": "2026-11-23T00:00:00Z"} if url == "/telemetry/aggregate" else {}
        resp = client.get(url, query_string=query)
        assert resp.status_code in (200, 204, 503), (url, resp.get_data(as_text=True)[:300])
        if resp.status_code != 204:  # GET /ping: InfluxDB's 204, no body
            answers[url] = resp.get_json()
    found = [(url, where, t) for url, body in answers.items() for where, t in _times(body)]
    wrong = [f for f in found if not f[2].endswith("Z")]
    assert not wrong, wrong
    places = {(url, where.split("[")[0]) for url, where, _ in found}
    for must in [("/telemetry/batch/status", ".last_flush_at"), ("/telemetry/batch/status", ".circuit.outages"),
                 ("/config", ".fields"), ("/telemetry/batch/status", ".spool.last_replay_at")]:
        assert any(u == must[0] and w.startswith(must[1]) for u, w in places), (must, sorted(places))
