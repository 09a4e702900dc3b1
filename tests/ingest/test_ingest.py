"""Ingest endpoints against a real PostgreSQL: formats, bad input, idempotency, concurrency."""

from __future__ import annotations

import gzip
import threading
from datetime import UTC, datetime, timedelta

import orjson

RAW = {"Content-Type": "text/plain"}
JSON = {"Content-Type": "application/json"}


def rows(db, sql="SELECT device_id, metric, value, value_text FROM telemetry_readings ORDER BY 1, 2"):
    return db.execute(sql).fetchall()


def test_seed_raw_string_is_stored_with_seed_response_shape(client, db):
    r = client.post("/telemetry/parse", data="roll:15.2,pitch:8.1,alt:150,bat_v:12.4",
                    headers={**RAW, "X-Device-Id": "drone-1"})
    assert r.status_code == 200, r.json
    body = r.json
    assert body["success"] is True and body["stored"] is True
    assert body["accepted"] == 4 and body["rejected"] == [] and body["duplicates"] == 0
    assert body["parsed_data"]["roll"] == 15.2 and body["parsed_data"]["raw_data"].startswith("roll:15.2")
    assert body["batch_id"]
    assert rows(db) == [("drone-1", "alt", 150.0, None), ("drone-1", "bat_v", 12.4, None),
                        ("drone-1", "pitch", 8.1, None), ("drone-1", "roll", 15.2, None)]
    raw = db.execute("SELECT payload, parser_version, data_source FROM telemetry_raw").fetchall()
    assert raw == [("roll:15.2,pitch:8.1,alt:150,bat_v:12.4", "2.0", "flask_api")]
    dev = db.execute("SELECT device_id, first_seen <= last_seen FROM devices").fetchall()
    assert dev == [("drone-1", True)]


def test_device_id_sources_in_priority_order(client, db):
    client.post("/telemetry/parse?device_id=q", data="device_id:m,a:1", headers={**RAW, "X-Device-Id": "h"})
    client.post("/telemetry/parse?device_id=q", data="a:2", headers={**RAW, "X-Device-Id": "h"})
    client.post("/telemetry/parse?device_id=q", data="a:3", headers=RAW)
    assert rows(db) == [("h", "a", 2.0, None), ("m", "a", 1.0, None), ("q", "a", 3.0, None)]


def test_json_formats_are_stored(client, db):
    body = [
        {"device_id": "n1", "flow_rate": 12.5, "totalizer": 1000.25, "temperature": 18.5, "status": 3,
         "timestamp": "2026-11-23T10:00:00Z"},
        {"device_id": "p1", "timestamp": "2026-11-23T10:00:01Z", "signals": {"sine": 0.5, "noise": -0.25}},
    ]
    r = client.post("/telemetry/parse", data=orjson.dumps(body), headers=JSON)
    assert r.status_code == 200, r.json
    assert r.json["accepted"] == 6
    assert rows(db) == [("n1", "flow_rate", 12.5, None), ("n1", "status", 3.0, None),
                        ("n1", "temperature", 18.5, None), ("n1", "totalizer", 1000.25, None),
                        ("p1", "noise", -0.25, None), ("p1", "sine", 0.5, None)]
    ts = db.execute("SELECT DISTINCT ts FROM telemetry_readings WHERE device_id='n1'").fetchall()
    assert ts == [(datetime(2026, 11, 23, 10, tzinfo=UTC),)]


def test_text_values_and_booleans(client, db):
    r = client.post("/telemetry/parse", data="flight_mode:AUTO,armed:on", headers={**RAW, "X-Device-Id": "d"})
    assert r.status_code == 200
    assert rows(db) == [("d", "armed", 1.0, None), ("d", "flight_mode", None, "AUTO")]


def test_mixed_body_stores_valid_lines_reports_and_quarantines_the_rest(client, db):
    body = "alt:1\nalt:nan\nthis is not telemetry\npitch:2"
    r = client.post("/telemetry/parse", data=body, headers={**RAW, "X-Device-Id": "d"})
    assert r.status_code == 207
    assert r.json["accepted"] == 2
    assert [(e["position"], e["reason"]) for e in r.json["rejected"]] == [
        (2, "field 'alt': nan is not a finite number"), (3, "'this is not telemetry' is not key:value")]
    assert rows(db) == [("d", "alt", 1.0, None), ("d", "pitch", 2.0, None)]
    q = db.execute("SELECT position, raw FROM telemetry_quarantine ORDER BY position").fetchall()
    assert q == [(2, "alt:nan"), (3, "this is not telemetry")]


def test_nothing_valid_is_400_and_still_quarantined(client, app, db):
    r = client.post("/telemetry/parse", data="garbage\nalt:inf", headers={**RAW, "X-Device-Id": "d"})
    assert r.status_code == 400
    assert r.json["success"] is False and r.json["rejected_count"] == 2
    app.extensions["telemetry"].buffer.flush(5)
    assert db.execute("SELECT count(*) FROM telemetry_quarantine").fetchone() == (2,)
    assert rows(db) == []


def test_empty_body_is_400(client, db):
    assert client.post("/telemetry/parse", data="", headers={**RAW, "X-Device-Id": "d"}).status_code == 400


def test_wrong_content_type_is_415(client, db):
    r = client.post("/telemetry/parse", data="<a/>", headers={"Content-Type": "application/xml"})
    assert r.status_code == 415 and "not supported" in r.json["error"]
    r = client.post("/telemetry/parse?format=xml", data="a:1", headers=RAW)
    assert r.status_code == 415


def test_oversized_body_is_413(app, client, db):
    limit = app.extensions["telemetry"].config.max_body_bytes
    r = client.post("/telemetry/parse", data=b"a:1\n" * (limit // 4 + 1), headers={**RAW, "X-Device-Id": "d"})
    assert r.status_code == 413


def test_gzip_body_accepted_and_bomb_refused(app, client, db):
    r = client.post("/telemetry/parse", data=gzip.compress(b"alt:1\npitch:2"),
                    headers={**RAW, "X-Device-Id": "d", "Content-Encoding": "gzip"})
    assert r.status_code == 200 and r.json["accepted"] == 2
    cap = app.extensions["telemetry"].config.max_decompressed_bytes
    bomb = gzip.compress(b"a" * (cap + 10))
    r = client.post("/telemetry/parse", data=bomb, headers={**RAW, "X-Device-Id": "d", "Content-Encoding": "gzip"})
    assert r.status_code == 413 and "decompressed" in r.json["error"]
    r = client.post("/telemetry/parse", data=b"not gzip", headers={**RAW, "Content-Encoding": "gzip"})
    assert r.status_code == 400
    r = client.post("/telemetry/parse", data=b"a:1", headers={**RAW, "Content-Encoding": "br"})
    assert r.status_code == 415


def test_non_utf8_is_400(client, db):
    r = client.post("/telemetry/parse", data=b"alt:\xff\xfe", headers={**RAW, "X-Device-Id": "d"})
    assert r.status_code == 400 and "UTF-8" in r.json["error"]


def test_bad_device_header_is_400(client, db):
    r = client.post("/telemetry/parse", data="a:1", headers={**RAW, "X-Device-Id": "bad id"})
    assert r.status_code == 400


def test_store_false_parses_only(client, db):
    r = client.post("/telemetry/parse?store=false", data="alt:1", headers={**RAW, "X-Device-Id": "d"})
    assert r.status_code == 200 and r.json["stored"] is False and r.json["parsed"] == 1
    assert rows(db) == []


def test_same_batch_twice_makes_no_duplicates(client, db):
    body = "ts:2026-11-23T10:00:00Z,alt:1,pitch:2\nts:2026-11-23T10:00:01Z,alt:3,pitch:4"
    first = client.post("/telemetry/parse", data=body, headers={**RAW, "X-Device-Id": "d"})
    again = client.post("/telemetry/parse", data=body, headers={**RAW, "X-Device-Id": "d"})
    assert first.status_code == again.status_code == 200
    assert first.json["duplicates"] == 0 and again.json["duplicates"] == 4
    assert db.execute("SELECT count(*) FROM telemetry_readings").fetchone() == (4,)


def test_metric_keeps_its_type(client, db):
    assert client.post("/telemetry/parse", data="alt:1", headers={**RAW, "X-Device-Id": "d"}).status_code == 200
    r = client.post("/telemetry/parse", data="alt:high\npitch:2", headers={**RAW, "X-Device-Id": "d"})
    assert r.status_code == 207
    assert r.json["rejected"][0]["position"] == 1 and "metric is number" in r.json["rejected"][0]["reason"]
    r = client.post("/telemetry/parse", data="newthing:hello", headers={**RAW, "X-Device-Id": "d"})
    assert r.status_code == 200
    r = client.post("/telemetry/parse", data="newthing:5", headers={**RAW, "X-Device-Id": "d"})
    assert r.status_code == 400 and "metric is text" in r.json["rejected"][0]["reason"]
    assert db.execute("SELECT value_type FROM telemetry_fields WHERE name='newthing'").fetchone() == ("text",)


def test_aliases_map_to_catalogue_names(client, db):
    r = client.post("/telemetry/parse", data="battery_voltage:12.1,latitude:52.0", headers={**RAW, "X-Device-Id": "d"})
    assert r.status_code == 200
    assert rows(db) == [("d", "bat_v", 12.1, None), ("d", "gps_lat", 52.0, None)]


def test_reading_in_a_month_without_partition_is_kept(client, db):
    r = client.post("/telemetry/parse", data="ts:2003-05-04T03:02:01Z,alt:7", headers={**RAW, "X-Device-Id": "d"})
    assert r.status_code == 200
    where = db.execute("SELECT tableoid::regclass::text FROM telemetry_readings").fetchall()
    assert where == [("telemetry_readings_default",)]
    from datetime import date

    from backend.store.partitions import ensure_month
    assert ensure_month(db, date(2003, 5, 1)) == 1
    where = db.execute("SELECT tableoid::regclass::text, value FROM telemetry_readings").fetchall()
    assert where == [("telemetry_readings_2003_05", 7.0)]


def test_many_threads_posting_at_once_rows_equal_accepted(client, app, db):
    accepted = []
    errors = []

    def worker(n: int) -> None:
        c = app.test_client()
        c.environ_base["HTTP_AUTHORIZATION"] = "Bearer test-admin-key"
        for i in range(25):
            body = f"device_id:t{n},ts:{1_763_000_000 + i},a:{i},b:{n}"
            r = c.post("/telemetry/parse", data=body, headers=RAW)
            (accepted if r.status_code == 200 else errors).append(r.json.get("accepted", 0))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sum(accepted) == 16 * 25 * 2
    assert db.execute("SELECT count(*) FROM telemetry_readings").fetchone() == (sum(accepted),)


def test_flush_and_status_endpoints(client, db):
    client.post("/telemetry/parse", data="alt:1", headers={**RAW, "X-Device-Id": "d"})
    r = client.post("/telemetry/batch/flush")
    assert r.status_code == 200 and r.json["batch_status"]["pending_records"] == 0
    s = client.get("/telemetry/batch/status").json
    assert s["written_total"] == 1 and s["batch_size"] == 500 and s["last_flush_at"]


def test_health_and_config(client, db):
    h = client.get("/health")
    assert h.status_code == 200 and h.json["status"] == "healthy" and h.json["database_connected"] is True
    c = client.get("/config").json
    assert c["telemetry_fields"]["roll"] == "Roll angle in degrees"
    assert c["batch_size"] == 500 and c["max_retries"] == 3
    assert {"raw", "json"} <= set(c["formats"])
    names = {f["name"] for f in c["fields"]}
    assert {"flow_rate", "totalizer", "temperature", "status", "bat_v", "armed"} <= names


def test_unknown_fields_are_catalogued(client, db):
    client.post("/telemetry/parse", data="rotor_rpm:1200", headers={**RAW, "X-Device-Id": "d"})
    c = client.get("/config").json
    assert "rotor_rpm" in {f["name"] for f in c["fields"]}


def test_nul_character_is_refused_per_field_and_the_rest_is_stored(client, db):
    # PostgreSQL text cannot hold NUL: a value with one is a 4xx reason for its line only,
    # never a failed flush (which would be a 503 for every request sharing it).
    r = client.post("/telemetry/parse", data="note:a\x00b,alt:1\nalt:2,ts:1763900000",
                    headers={**RAW, "X-Device-Id": "nul"})
    assert r.status_code == 207, r.json
    assert r.json["accepted"] == 1 and "NUL" in r.json["rejected"][0]["reason"]
    assert rows(db) == [("nul", "alt", 2.0, None)]
    raw, = db.execute("SELECT payload FROM telemetry_raw").fetchone()
    assert raw == "note:a\ufffdb,alt:1\nalt:2,ts:1763900000"
    q = db.execute("SELECT raw FROM telemetry_quarantine WHERE device_id = 'nul'").fetchall()
    assert q == [("note:a\ufffdb,alt:1",)]


def test_a_big_request_of_known_metrics_goes_in_by_copy_and_a_resend_is_stored_once(client, db):
    # The catalogue confirms the types on the request path (Submission.typed), so the sink
    # may COPY straight into the table; re-sending the same body takes the idempotent path.
    body = "\n".join(f"alt:{i},pitch:{-i},ts:{1763900000 + i}" for i in range(200))  # 400 readings
    first = client.post("/telemetry/parse", data=body, headers={**RAW, "X-Device-Id": "big"})
    assert first.status_code == 200 and first.json["accepted"] == 400 and first.json["duplicates"] == 0
    again = client.post("/telemetry/parse", data=body, headers={**RAW, "X-Device-Id": "big"})
    assert again.status_code == 200 and again.json["duplicates"] == 400
    s = client.get("/telemetry/batch/status").json
    assert s["flushes_by_method"] == {"copy": 1, "insert": 1}
    assert db.execute("SELECT count(*) FROM telemetry_readings WHERE device_id = 'big'").fetchone() == (400,)


# ---- distinct readings, duplicates and conflicts (issue 10) ------------------------------

ISSUE_BODY = "roll:5,alt:50\nroll:6,alt:60\n"


def series(db, device):
    return db.execute("SELECT metric, ts, value FROM telemetry_readings WHERE device_id = %s ORDER BY ts, metric",
                      (device,)).fetchall()


def test_lines_without_ts_in_one_body_are_all_stored_in_line_order(client, db):
    for n, (data, extra) in enumerate([(ISSUE_BODY, {}), (gzip.compress(ISSUE_BODY.encode()),
                                                          {"Content-Encoding": "gzip"})]):
        r = client.post("/telemetry/parse", data=data, headers={**RAW, "X-Device-Id": f"nots{n}", **extra})
        assert r.status_code == 200, r.json
        got = series(db, f"nots{n}")
        assert [(m, v) for m, _, v in got] == [("alt", 50.0), ("roll", 5.0), ("alt", 60.0), ("roll", 6.0)]
        assert got[2][1] - got[0][1] == timedelta(microseconds=1)
        assert (r.json["accepted"], r.json["duplicates"], r.json["conflicts"]) == (4, 0, 0)
        assert r.json["server_timed"] == 2 and "1 µs" in r.json["server_time_rule"]


def test_two_requests_received_in_the_same_microsecond_stay_distinct(client, db, monkeypatch):
    import backend.ingest.pipeline

    instant = datetime(2026, 11, 23, 10, 0, 0, 123456, tzinfo=UTC)

    class FrozenClock(datetime):
        @classmethod
        def now(cls, tz=None):
            return instant

    monkeypatch.setattr(backend.ingest.pipeline, "datetime", FrozenClock)
    answers = [client.post("/telemetry/parse", data=body, headers={**RAW, "X-Device-Id": "same-us"}).json
               for body in ("roll:5", "roll:5", "roll:6")]
    assert [(a["accepted"], a["duplicates"]) for a in answers] == [(1, 0), (1, 0), (1, 0)]
    assert series(db, "same-us") == [("roll", instant, 5.0), ("roll", instant + timedelta(microseconds=1), 5.0),
                                     ("roll", instant + timedelta(microseconds=2), 6.0)]


def test_a_resend_of_a_body_with_ts_stores_nothing(client, db):
    body = "ts:2026-11-23T10:00:00Z,roll:5,alt:50\nts:2026-11-23T10:00:01Z,roll:6,alt:60"
    first = client.post("/telemetry/parse", data=body, headers={**RAW, "X-Device-Id": "rs"})
    again = client.post("/telemetry/parse", data=body, headers={**RAW, "X-Device-Id": "rs"})
    assert (first.json["accepted"], first.json["duplicates"]) == (4, 0)
    assert again.status_code == 200 and "server_timed" not in again.json
    assert len(series(db, "rs")) == 4
    assert (again.json["accepted"], again.json["duplicates"]) == (0, 4)  # "accepted": newly stored
    assert again.json["conflicts"] == 0


def test_a_conflicting_resend_is_reported_and_quarantined_and_the_stored_value_kept(client, db):
    body = "ts:2026-11-23T10:00:00Z,roll:5,alt:50\nts:2026-11-23T10:00:01Z,roll:6,alt:60"
    client.post("/telemetry/parse", data=body, headers={**RAW, "X-Device-Id": "cf"})
    changed = "ts:2026-11-23T10:00:00Z,roll:5,alt:50\nts:2026-11-23T10:00:01Z,roll:6,alt:61.5"
    r = client.post("/telemetry/parse", data=changed, headers={**RAW, "X-Device-Id": "cf"})
    assert r.status_code == 207, r.json
    assert (r.json["accepted"], r.json["duplicates"], r.json["conflicts"]) == (0, 3, 1)
    (c,) = r.json["conflicting"]
    assert (c["position"], c["metric"]) == (2, "alt")
    assert c["reason"] == "conflict: (cf, alt, 2026-11-23T10:00:01.000000Z) already stored with value 60"
    assert db.execute("SELECT value FROM telemetry_readings WHERE device_id = 'cf' AND metric = 'alt'"
                      " ORDER BY ts").fetchall() == [(50.0,), (60.0,)]
    q = db.execute("SELECT position, reason, raw FROM telemetry_quarantine WHERE request_id = %s",
                   (r.json["batch_id"],)).fetchall()
    assert q == [(2, c["reason"], "device_id:cf,ts:2026-11-23T10:00:01.000000Z,alt:61.5")]
    latest = db.execute("SELECT value FROM device_latest WHERE device_id = 'cf' AND metric = 'alt'").fetchone()
    assert latest == (60.0,)


def test_a_conflict_within_one_request_is_reported_and_an_identical_line_is_a_duplicate(client, db):
    body = ("ts:2026-11-23T10:00:00Z,mode:AUTO,alt:1\nts:2026-11-23T10:00:00Z,alt:2\n"
            "ts:2026-11-23T10:00:00Z,mode:AUTO,alt:1\nts:2026-11-23T10:00:00Z,alt:-0.0\nts:1763892000,alt:0")
    r = client.post("/telemetry/parse", data=body, headers={**RAW, "X-Device-Id": "one"})
    assert r.status_code == 207, r.json
    assert (r.json["accepted"], r.json["duplicates"], r.json["conflicts"]) == (3, 2, 2)
    assert [(c["position"], c["metric"]) for c in r.json["conflicting"]] == [(2, "alt"), (4, "alt")]
    assert "already stored with value 1" in r.json["conflicting"][0]["reason"]
    assert db.execute("SELECT metric, value, value_text FROM telemetry_readings WHERE device_id = 'one'"
                      " ORDER BY ts, metric").fetchall() == [("alt", 0.0, None), ("alt", 1.0, None),
                                                            ("mode", None, "AUTO")]
    again = client.post("/telemetry/parse", data="ts:1763892000,alt:-0.0", headers={**RAW, "X-Device-Id": "one"})
    assert (again.json["duplicates"], again.json["conflicts"]) == (1, 0)  # -0.0 is the same value as 0


def test_the_same_request_in_json_reports_conflicts_with_array_positions(client, db):
    doc = [{"device_id": "j", "ts": 1763892000, "v": 1}, {"device_id": "j", "ts": 1763892000, "v": 1},
           {"device_id": "j", "ts": 1763892000, "v": 2}]
    r = client.post("/telemetry/parse", data=orjson.dumps(doc), headers=JSON)
    assert (r.status_code, r.json["accepted"], r.json["duplicates"], r.json["conflicts"]) == (207, 1, 1, 1)
    assert r.json["conflicting"][0]["position"] == 2


# Hypothesis over random bodies, raw and JSON, with and without ts, sent once, re-sent and
# re-sent with changed values. Few times and values, so keys collide often. Every reading
# sent is counted exactly once: accepted (newly stored) + duplicates (the same value is
# stored) + conflicts (another value is stored) + rejected_readings (refused messages'
# readings) == readings sent; and the rows stored are exactly the readings accepted.
_TIMES = [None, None, "2026-11-23T10:00:00Z", "2026-11-23T10:00:01Z"]
# Mostly valid values; "nan" is refused by the parser, "high" for a number metric and "5"
# for a text one by the catalogue.
_VALUES = {"hx": ["0", "-0.0", "1", "2.5"] * 4 + ["nan", "high"], "hy": ["1", "2.5"] * 8 + ["nan"],
           "hmode": ["AUTO", "MANUAL"] * 8 + ["5"]}
_DEVICE_SEQ = iter(range(10**9))


def _body(fmt: str, device: str, messages: list[tuple[str | None, dict[str, str]]]) -> tuple[bytes, dict]:
    if fmt == "raw":
        lines = [",".join(([f"ts:{ts}"] if ts else []) + [f"{k}:{v}" for k, v in fields.items()])
                 for ts, fields in messages]
        return "\n".join(lines).encode(), {**RAW, "X-Device-Id": device}
    docs = [{"device_id": device, **({"ts": ts} if ts else {}),
             **{k: (v if k == "hmode" or v == "high" else float(v)) for k, v in fields.items()}}
            for ts, fields in messages]
    return orjson.dumps(docs), JSON  # float("nan") -> null in JSON: refused as "null is not a value"


def test_every_reading_sent_is_accounted_for_exactly_once(client, db):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    client.post("/telemetry/parse", data="hx:1,hy:1,hmode:AUTO", headers={**RAW, "X-Device-Id": "types"})
    message = st.tuples(st.sampled_from(_TIMES),
                        st.lists(st.sampled_from(list(_VALUES)), min_size=1, max_size=3, unique=True).flatmap(
                            lambda names: st.fixed_dictionaries({n: st.sampled_from(_VALUES[n]) for n in names})))
    plan = st.tuples(st.sampled_from(["raw", "json"]), st.lists(message, min_size=1, max_size=6),
                     st.lists(st.sampled_from(["same", "changed"]), max_size=2), st.randoms())

    seen = {"duplicates": 0, "conflicts": 0, "rejected_readings": 0, "server_timed": 0}

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(plan)
    def check(p):
        fmt, messages, resends, rnd = p
        device = f"hyp{next(_DEVICE_SEQ)}"
        bodies = [messages] + [messages if kind == "same" else
                               [(ts, {k: rnd.choice(_VALUES[k]) for k in fields}) for ts, fields in messages]
                               for kind in resends]
        accepted = conflicts = 0
        for sent in bodies:
            data, headers = _body(fmt, device, sent)
            r = client.post("/telemetry/parse", data=data, headers=headers)
            assert r.status_code in (200, 207, 400), r.json
            a = r.json
            assert a["accepted"] + a["duplicates"] + a["conflicts"] + a["rejected_readings"] == \
                sum(len(fields) for _, fields in sent), a
            assert a["conflicts"] == len(a["conflicting"])
            accepted += a["accepted"]
            conflicts += a["conflicts"]
            for key in seen:
                seen[key] += a.get(key, 0)
            untimed_ok = [f for ts, f in sent if ts is None and not {"nan", "high", "5"} & set(f.values())]
            assert a["duplicates"] + a["conflicts"] <= sum(len(f) for _, f in sent) - sum(len(f) for f in untimed_ok)
        stored = db.execute("SELECT count(*) FROM telemetry_readings WHERE device_id = %s", (device,)).fetchone()[0]
        assert stored == accepted
        quarantined = db.execute("SELECT count(*) FROM telemetry_quarantine WHERE device_id = %s"
                                 " AND reason LIKE 'conflict:%%'", (device,)).fetchone()[0]
        assert quarantined == conflicts

    check()
    assert all(seen.values()), seen  # the examples did meet every case


# ---- bounded work per request: readings in flight per worker (issue 11) -----------------------


def _start_slow_upload(server, body: bytes, sent: int):
    """A request whose headers (with the full Content-Length) and first `sent` bytes are on the wire."""
    import socket

    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    head = (f"POST /telemetry/parse HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {server.api_key}\r\n"
            f"Content-Type: text/plain\r\nX-Device-Id: slow\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n")
    sock.sendall(head.encode() + body[:sent])
    return sock


def _finish_slow_upload(sock, body: bytes, sent: int) -> int:
    sock.sendall(body[sent:])
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    sock.close()
    return int(data.split(b" ", 2)[1])


def test_readings_in_flight_per_worker_are_bounded_with_503_and_retry_after(make_live_server):
    # One worker, room for ~20,000 readings in flight. A big body that is still arriving holds
    # its share (from its Content-Length); a second big body is refused before it is read.
    from tests.live_server import wait_for

    # gunicorn's own gthread worker hands a request to the application while its body is still
    # arriving; the default buffering worker reads it first, so there a slow body holds no share.
    server = make_live_server(env={"MAX_READINGS_IN_FLIGHT": "20000", "GUNICORN_WORKER_CLASS": "gthread"},
                              workers=1, threads=4)
    big = "\n".join(f"ts:{1763900000 + i},alt:{i},pitch:{i},roll:{i}" for i in range(5000)).encode()
    assert 10_000 < len(big) // 20 < 20_000  # the estimate before parsing: ~20 bytes a reading
    sock = _start_slow_upload(server, big, 100)
    try:
        # The slow body must hold its share before the second is sent: sent at once, on a loaded
        # machine the second could be admitted first and the slow one refused (CI saw it).
        wait_for(lambda: server.get("/telemetry/batch/status?scope=worker").json()["admission"]
                 ["readings_in_flight"] > 0, timeout=10)

        def refused():
            r = server.post("/telemetry/parse", data=big, headers={**RAW, "X-Device-Id": "second"})
            return [r] if r.status_code == 503 else None  # a list: a 503 Response is falsy

        r, = wait_for(refused, timeout=10)
        assert "MAX_READINGS_IN_FLIGHT" in r.json()["error"], r.text
        assert int(r.headers["Retry-After"]) >= 1
        # Small requests still fit beside it.
        small = server.post("/telemetry/parse", data="alt:1", headers={**RAW, "X-Device-Id": "small"})
        assert small.status_code == 200, small.text
    finally:
        status = _finish_slow_upload(sock, big, 100)
    assert status == 200
    # Released when the request ended: the same body now goes in.
    r = server.post("/telemetry/parse", data=big, headers={**RAW, "X-Device-Id": "second"})
    assert r.status_code == 200 and r.json()["accepted"] == 15_000, r.text
    assert server.query("SELECT count(*) FROM telemetry_readings WHERE device_id = 'second'")[0][0] == 15_000


def test_a_body_bigger_than_the_in_flight_bound_goes_in_when_it_is_alone(make_live_server):
    # Refusing it always would make it impossible to send; alone it is bounded by MAX_BODY_BYTES.
    server = make_live_server(env={"MAX_READINGS_IN_FLIGHT": "1000"}, workers=1, threads=4)
    body = "\n".join(f"ts:{1763900000 + i},alt:{i},pitch:{i}" for i in range(2000))
    r = server.post("/telemetry/parse", data=body, headers={**RAW, "X-Device-Id": "alone"})
    assert r.status_code == 200 and r.json()["accepted"] == 4000, r.text
