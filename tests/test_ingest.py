"""Ingest endpoints against a real PostgreSQL: formats, bad input, idempotency, concurrency."""

from __future__ import annotations

import gzip
import threading
from datetime import UTC, datetime

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

    from backend.partitions import ensure_month
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

    server = make_live_server(env={"MAX_READINGS_IN_FLIGHT": "20000"}, workers=1, threads=4)
    big = "\n".join(f"ts:{1763900000 + i},alt:{i},pitch:{i},roll:{i}" for i in range(5000)).encode()
    assert 10_000 < len(big) // 20 < 20_000  # the estimate before parsing: ~20 bytes a reading
    sock = _start_slow_upload(server, big, 100)
    try:
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
