"""The field catalogue on the request path: bounded in time, in new names, and in what a worker loads.

Real gunicorn, real PostgreSQL; a frozen database is the `db_proxy` fixture's blackhole (a
proxy that stops forwarding, as a SIGSTOPped server or a dead network looks to the service).
"""

from __future__ import annotations

import time

import psycopg
import requests

from tests.live_server import wait_for

RAW = {"Content-Type": "text/plain"}


def new_names(prefix: str, n: int) -> str:
    return ",".join(f"{prefix}_{i}:{i}" for i in range(n))


def fields_like(server, prefix: str) -> int:
    return server.query("SELECT count(*) FROM telemetry_fields WHERE name LIKE %s", prefix + "\\_%")[0][0]


def test_new_metric_with_a_frozen_database_is_acknowledged_within_the_deadline(make_live_server, db_proxy):
    # The issue: with PostgreSQL frozen, known metrics were spooled in 5 s, but a request with
    # a new metric name waited for the whole freeze in the catalogue's registration.
    ack = 10
    # A full pool: the catalogue gets an open connection, which then hangs (with none free, the
    # pool's own 2 s wait would have given up and hidden the problem).
    server = make_live_server(env={"DATABASE_URL": db_proxy.url, "ACK_TIMEOUT": str(ack), "DB_POOL_MIN": "4",
                                   "DB_POOL_MAX": "4"}, workers=1)
    warm = server.post("/telemetry/parse", data="alt:1", headers={**RAW, "X-Device-Id": "frozen"})
    assert warm.status_code == 200 and warm.json()["durability"] == "committed", warm.text
    db_proxy.blackhole()
    try:
        started = time.monotonic()
        try:
            r = server.post("/telemetry/parse", data="brand_new_metric:7,alt:2",
                            headers={**RAW, "X-Device-Id": "frozen"}, timeout=ack + 5)
        except requests.Timeout as exc:
            raise AssertionError(f"no answer within ACK_TIMEOUT={ack}s + 5 s: the request was held") from exc
        took = time.monotonic() - started
        print(f"new metric, frozen database, ACK_TIMEOUT={ack}: answered in {took:.1f} s")
        # The deadline is the acknowledgement deadline; never the length of the freeze.
        assert took <= ack + 1, took
        assert r.status_code == 200, r.text
        assert r.json()["durability"] == "spooled"
        # Other requests with new names are not held either (the circuit is open now).
        r2 = server.post("/telemetry/parse", data="another_new_metric:1",
                         headers={**RAW, "X-Device-Id": "frozen"}, timeout=ack + 5)
        assert r2.status_code == 200 and r2.json()["durability"] == "spooled", r2.text
    finally:
        db_proxy.up()
    # Registered later, by the replayer's write, with the type the reading carried.
    wait_for(lambda: server.query("SELECT count(*) FROM telemetry_readings WHERE device_id = 'frozen'")[0][0] == 4,
             timeout=60)
    assert server.query("SELECT name, value_type FROM telemetry_fields WHERE name LIKE '%new_metric'"
                        " ORDER BY 1") == [("another_new_metric", "number"), ("brand_new_metric", "number")]


def test_new_names_are_bounded_per_request_and_per_key(make_live_server):
    server = make_live_server(env={"MAX_NEW_FIELDS_PER_REQUEST": "50", "MAX_NEW_FIELDS_PER_KEY_PER_HOUR": "80"},
                              workers=2)
    dev = {**RAW, "X-Device-Id": "bounds"}
    # Per request: refused whole, nothing registered, nothing stored; the answer names the bound.
    r = server.post("/telemetry/parse", data=new_names("req", 51), headers=dev)
    assert r.status_code == 400, r.text
    assert "MAX_NEW_FIELDS_PER_REQUEST" in r.json()["error"] and "51" in r.json()["error"]
    assert fields_like(server, "req") == 0
    assert server.query("SELECT count(*) FROM telemetry_readings WHERE device_id = 'bounds'")[0][0] == 0
    # Known names do not count: a request may carry any number of them.
    assert server.post("/telemetry/parse", data=new_names("req", 50), headers=dev).status_code == 200
    body = new_names("req", 50) + "," + new_names("more", 30)
    assert server.post("/telemetry/parse", data=body, headers=dev).status_code == 200
    assert fields_like(server, "req") == 50 and fields_like(server, "more") == 30

    # Per key per hour: this key has introduced 80 names; the next new one is refused (429 +
    # Retry-After) by every worker, since the count is PostgreSQL's.
    for _ in range(4):  # fresh connections reach both workers
        r = requests.post(server.url + "/telemetry/parse", data="one_too_many:1",
                          headers={**server.headers(), **dev, "Connection": "close"}, timeout=30)
        assert r.status_code == 429, r.text
        assert "MAX_NEW_FIELDS_PER_KEY_PER_HOUR" in r.json()["error"]
        assert 1 <= int(r.headers["Retry-After"]) <= 3600
    assert server.query("SELECT count(*) FROM telemetry_fields WHERE name = 'one_too_many'")[0][0] == 0
    # Names already known still go in for that key; another key has its own budget.
    assert server.post("/telemetry/parse", data="more_1:2,alt:3", headers=dev).status_code == 200
    made = server.post("/api/keys", json={"name": "gw-other", "scopes": ["ingest"]})
    assert made.status_code in (200, 201), made.text
    other = {"Authorization": f"Bearer {made.json()['key']}"}
    r = requests.post(server.url + "/telemetry/parse", data="one_too_many:1", headers={**dev, **other}, timeout=30)
    assert r.status_code == 200, r.text
    assert server.query("SELECT count(*) FROM telemetry_fields WHERE name = 'one_too_many'")[0][0] == 1


def test_default_bounds_take_a_seed_drone_message(live_server):
    # Seed 001: ~40 drone fields in one message; the seeded catalogue knows some, not all.
    names = ["flight_mode", "armed", "flight_time_seconds", "roll_degrees", "pitch_degrees", "yaw_degrees",
             "gps_latitude", "gps_longitude", "gps_altitude_m", "battery_voltage_v", "battery_current_a",
             "motor1_pwm", "motor2_pwm", "motor3_pwm", "motor4_pwm"]
    names += [f"seed_extra_{i}" for i in range(40 - len(names))]
    body = ",".join(f"{n}:{'AUTO' if n == 'flight_mode' else i}" for i, n in enumerate(names))
    r = live_server.post("/telemetry/parse", data=body, headers={**RAW, "X-Device-Id": "seed001"})
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == 40


def test_a_big_catalogue_is_not_loaded_by_a_fresh_worker(make_live_server, database_url):
    # 400,000 names in telemetry_fields (the four requests of 100,000): a worker keeps
    # at most CATALOGUE_CACHE_SIZE of them, looked up by name when a request needs them.
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO telemetry_fields (name, value_type)"
                     " SELECT 'bulk_' || i, 'number' FROM generate_series(1, 400000) AS i")
    server = make_live_server(env={"CATALOGUE_CACHE_SIZE": "1000"}, workers=1)
    started = time.monotonic()
    r = server.post("/telemetry/parse", data="bulk_7:1,alt:2,latitude:52.1",
                    headers={**RAW, "X-Device-Id": "fresh"})
    first_ms = (time.monotonic() - started) * 1000
    assert r.status_code == 200, r.text
    print(f"first request on a fresh worker with 400k catalogue rows: {first_ms:.0f} ms")
    status = server.get("/telemetry/batch/status").json()
    cat = status.get("catalogue")
    assert cat is not None, "the status shows the worker's catalogue cache"
    assert cat["cached"] <= 1000 and cat["cache_size"] == 1000, cat
    # Aliases still resolve (latitude -> gps_lat), and the big catalogue's names keep their types.
    wait_for(lambda: server.query("SELECT metric FROM telemetry_readings WHERE device_id = 'fresh'"
                                  " ORDER BY 1") == [("alt",), ("bulk_7",), ("gps_lat",)], timeout=30)
    r = server.post("/telemetry/parse", data="bulk_8:high", headers={**RAW, "X-Device-Id": "fresh"})
    assert r.status_code == 400 and "metric is number" in r.json()["rejected"][0]["reason"], r.text


def test_names_that_cannot_be_checked_during_an_outage_are_bounded_too(make_live_server, db_proxy):
    # With the database down, new names go unchecked into the spool (the replayer registers
    # them); beyond MAX_NEW_FIELDS_PER_REQUEST that would be unbounded growth later: 503.
    server = make_live_server(env={"DATABASE_URL": db_proxy.url, "MAX_NEW_FIELDS_PER_REQUEST": "5"}, workers=1)
    dev = {**RAW, "X-Device-Id": "outage"}
    assert server.post("/telemetry/parse", data="alt:1", headers=dev).status_code == 200
    db_proxy.down()
    try:
        r = server.post("/telemetry/parse", data=new_names("unchecked", 6), headers=dev)
        assert r.status_code == 503, r.text
        assert "MAX_NEW_FIELDS_PER_REQUEST" in r.json()["error"] and int(r.headers["Retry-After"]) >= 1
        r = server.post("/telemetry/parse", data=new_names("few", 3), headers=dev)
        assert r.status_code == 200 and r.json()["durability"] == "spooled", r.text
    finally:
        db_proxy.up()
    wait_for(lambda: fields_like(server, "few") == 3, timeout=60)
    assert fields_like(server, "unchecked") == 0
