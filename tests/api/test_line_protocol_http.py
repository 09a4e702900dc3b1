"""The InfluxDB routes in process against the real test database: answers, errors, auth, gzip."""

from __future__ import annotations

import base64
import gzip
from datetime import UTC, datetime

import pytest

T0 = 1780315200  # 2026-06-01T12:00:00Z
V2 = "/api/v2/write?org=o&bucket=b&precision=s"


def rows(db, device: str | None = None) -> list[tuple]:
    q = "SELECT device_id, metric, ts, value, value_text FROM telemetry_readings"
    if device:
        return db.execute(q + " WHERE device_id = %s ORDER BY metric, ts", (device,)).fetchall()
    return db.execute(q + " ORDER BY device_id, metric, ts").fetchall()


def test_v2_write_204_exact_values_and_tags(client, db) -> None:
    body = (f'weather,device_id=ws1,site=roof temp=21.5,hum=40i,ok=t,note="sunny, \\"dry\\"" {T0}\n'
            f"weather,device_id=ws1,site=roof temp=22 {T0 + 60}\n")
    r = client.post(V2, data=body, headers={"Content-Type": "text/plain; charset=utf-8"})
    assert r.status_code == 204 and r.data == b""
    t = datetime.fromtimestamp(T0, UTC)
    assert rows(db, "ws1") == [
        ("ws1", "weather.hum", t, 40.0, None), ("ws1", "weather.note", t, None, 'sunny, "dry"'),
        ("ws1", "weather.ok", t, 1.0, None), ("ws1", "weather.temp", t, 21.5, None),
        ("ws1", "weather.temp", datetime.fromtimestamp(T0 + 60, UTC), 22.0, None)]
    meta = db.execute("SELECT metadata FROM devices WHERE device_id = 'ws1'").fetchone()[0]
    assert meta == {"tags": {"site": "roof"}}


def test_partial_write_keeps_good_lines_and_names_the_first_bad(client, db) -> None:
    body = f"m,host=a v=1 {T0}\nm,host=a v= {T0}\nm,host=a w=2 {T0}\nnot line protocol\n"
    r = client.post(V2, data=body)
    assert r.status_code == 400
    j = r.json
    assert j["code"] == "invalid" and j["line"] == 2 and j["lines_refused"] == 2
    assert j["message"].startswith("partial write: line 2: unable to parse 'm,host=a v= 1780315200': ")
    assert "missing field value" in j["message"]
    assert [x["line"] for x in j["refused"]] == [2, 4]
    assert [(r[1], r[3]) for r in rows(db, "a")] == [("m.v", 1.0), ("m.w", 2.0)]


def test_all_bad_and_empty_bodies(client, db) -> None:
    r = client.post(V2, data="m v=1\n")  # no device tag
    assert r.status_code == 400 and r.json["line"] == 1 and "no device" in r.json["message"]
    assert "nothing was written" in r.json["message"]
    r = client.post(V2, data="# only a comment\n\n")
    assert r.status_code == 400 and r.json == {**r.json, "code": "invalid", "message": "writing requires points"}
    assert rows(db) == []


def test_type_clash_and_conflict_name_their_line(client, db) -> None:
    assert client.post(V2, data=f"m,host=a v=1 {T0}").status_code == 204
    r = client.post(V2, data=f'm,host=a v=1 {T0}\nm,host=a v="text" {T0 + 1}\nm,host=a v=5 {T0}')
    assert r.status_code == 400 and r.json["line"] == 2, r.json  # the string into a numeric metric
    assert {x["line"] for x in r.json["refused"]} == {2, 3}  # 3: another value at a stored time
    assert r.json["duplicates"] == 1  # line 1 was sent before: stored once
    assert [(x[2], x[3]) for x in rows(db, "a")] == [(datetime.fromtimestamp(T0, UTC), 1.0)]


def test_v1_write_precisions_and_credentials(client, db) -> None:
    key = client.post("/api/keys", json={"name": "telegraf", "scopes": ["ingest"]}).json["key"]
    anon = client.application.test_client()
    line = "m,host=v1 v=1 494532"  # hours since the epoch
    assert anon.post("/write?db=x&precision=h", data=line).status_code == 401
    assert anon.post(f"/write?db=x&precision=h&u=any&p={key}", data=line).status_code == 204
    basic = base64.b64encode(f"user:{key}".encode()).decode()
    assert anon.post("/write?db=x&precision=m", data="m,host=v1 w=2 29671920",
                     headers={"Authorization": f"Basic {basic}"}).status_code == 204
    assert anon.post("/api/v2/write?bucket=b", data=f"m,host=v1 z=3 {T0 * 10**9}",
                     headers={"Authorization": f"Token {key}"}).status_code == 204
    # ?p= and Basic are InfluxDB 1.x ways: no other route takes them
    assert anon.post(f"/telemetry/parse?p={key}", data="device_id:x,v:1").status_code == 401
    r = anon.post("/api/v2/write?bucket=b", data="m,host=v1 v=1", headers={"Authorization": f"Basic {basic}"})
    assert r.status_code == 401 and r.json["code"] == "unauthorized" and r.json["message"]
    assert {(x[1], x[2]) for x in rows(db, "v1")} == {("m.v", datetime.fromtimestamp(T0, UTC)),
                                                      ("m.w", datetime.fromtimestamp(T0, UTC)),
                                                      ("m.z", datetime.fromtimestamp(T0, UTC))}


@pytest.mark.parametrize("path,bad", [("/api/v2/write?precision=h", "precision"), ("/write?precision=x", "precision"),
                                      ("/api/v2/write?bucket=b&database=x", "database")])
def test_bad_parameters_are_named(client, path: str, bad: str) -> None:
    r = client.post(path, data="m,host=a v=1")
    assert r.status_code == 400 and r.json["parameter"] == bad and r.json["code"] == "invalid"


def test_gzip_accepted_and_decompressed_size_bounded(make_app, db) -> None:
    app = make_app(max_decompressed_bytes=100_000)
    c = app.test_client()
    c.environ_base["HTTP_AUTHORIZATION"] = "Token test-admin-key"
    body = "\n".join(f"m,host=gz v={i} {T0 + i}" for i in range(100)).encode()
    assert c.post(V2, data=gzip.compress(body), headers={"Content-Encoding": "gzip"}).status_code == 204
    assert len(rows(db, "gz")) == 100
    bomb = gzip.compress(b"m,host=gz v=1 " + b"0" * 200_000)
    r = c.post(V2, data=bomb, headers={"Content-Encoding": "gzip"})
    assert r.status_code == 413 and r.json["code"] == "request too large" and "100000-byte" in r.json["message"]
    r = c.post(V2, data=b"not gzip", headers={"Content-Encoding": "gzip"})
    assert r.status_code == 400 and r.json["code"] == "invalid"


def test_ping_ready_health_and_query(client) -> None:
    anon = client.application.test_client()
    r = anon.get("/ping")
    assert r.status_code == 204 and r.headers["X-Influxdb-Version"] and r.headers["X-Influxdb-Build"] == "OSS"
    assert anon.head("/ping").status_code == 204
    assert anon.get("/ping?verbose=true").json == {"version": r.headers["X-Influxdb-Version"]}
    ready = anon.get("/ready")
    assert ready.status_code == 200 and ready.json["status"] == "ready" and ready.json["up"].endswith("s")
    h = anon.get("/health").json
    assert h["status"] == "healthy" and h["name"] and h["message"] and h["version"]  # ours + what clients read
    q = client.post("/query?q=CREATE+DATABASE+%22telegraf%22")
    assert q.status_code == 200 and q.json == {"results": [{"statement_id": 0}]}
    assert client.post("/query?q=SELECT+*+FROM+cpu").status_code == 400


def test_device_from_request_and_configured_tag(make_app, db) -> None:
    app = make_app(line_protocol_device_tags=["site"], line_protocol_metric="field")
    c = app.test_client()
    c.environ_base["HTTP_AUTHORIZATION"] = "Bearer test-admin-key"
    assert c.post(V2, data=f"m,site=s1,host=h v=1 {T0}").status_code == 204
    assert c.post(V2 + "&device_id=fallback", data=f"m,host=h v=2 {T0}").status_code == 204
    assert [(x[0], x[1]) for x in rows(db)] == [("fallback", "v"), ("s1", "v")]
    meta = dict(db.execute("SELECT device_id, metadata FROM devices").fetchall())
    assert meta["s1"] == {"tags": {"host": "h"}}
