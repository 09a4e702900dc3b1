"""The official InfluxDB clients, Telegraf's bodies and a fuzzer against a real gunicorn.

`influxdb-client` (2.x API, synchronous write_api) and `influxdb` (1.x, write_points) write
points; /telemetry/query must return exactly those values, types, times and devices; every
re-send stores nothing twice. Telegraf is not installed here: its bodies are built as its
`influxdb` / `influxdb_v2` outputs send them (gzip, `Authorization: Token`, ns timestamps,
sorted tags, `i` integers), per Telegraf's plugin documentation.
"""

from __future__ import annotations

import gzip
import warnings
from datetime import UTC, datetime, timedelta

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

influxdb_client = pytest.importorskip("influxdb_client", reason="influxdb-client is in requirements-dev.txt")
influxdb = pytest.importorskip("influxdb", reason="influxdb is in requirements-dev.txt")

from influxdb_client import InfluxDBClient, Point, WritePrecision  # noqa: E402
from influxdb_client.client.write_api import SYNCHRONOUS  # noqa: E402

T = (datetime.now(UTC) - timedelta(hours=2)).replace(microsecond=123456)


def readings(srv, device: str) -> list[tuple]:
    r = srv.get(f"/telemetry/query?device_id={device}&limit=1000&desc=false&order_by=ts")
    assert r.status_code == 200, r.text
    return sorted((x["metric"], x["ts"], x["value"]) for x in r.json()["data"])


def iso(t: datetime) -> str:
    return t.isoformat(timespec="microseconds").replace("+00:00", "Z")


@pytest.fixture
def server(make_live_server):
    srv = make_live_server(workers=2)
    key = srv.post("/api/keys", json={"name": "influx", "scopes": ["ingest"]}).json()["key"]
    return srv, key


def test_influxdb_client_v2(server) -> None:
    srv, key = server
    points = [
        Point("env").tag("device_id", "probe-1").tag("site", "lab 2").field("temp", 21.25).field("count", 7)
        .field("ok", True).field("label", 'north "wing", 3=4').time(T, WritePrecision.US),
        Point("env").tag("device_id", "probe-1").field("temp", -0.5).time(T + timedelta(seconds=1), WritePrecision.US),
        Point("power").tag("host", "probe-1").field("watts", 1.5e3).time(T, WritePrecision.US),
    ]
    with InfluxDBClient(url=srv.url, token=key, org="my-org") as client:
        assert client.ping() is True
        assert client.version() == "2.7.0-telemetry" and client.build() == "OSS"
        assert client.ready().status == "ready"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            health = client.health()
        assert health.name == "telemetry-ingest" and health.status == "healthy"
        write = client.write_api(write_options=SYNCHRONOUS)
        for _ in range(2):  # the second time is a re-send
            write.write(bucket="b", record=points, write_precision=WritePrecision.US)
        # a point without a time: the server times it, and only the key deduplicates a re-send
        client.api_client.set_default_header("Idempotency-Key", "probe-1-untimed-1")
        for _ in range(2):
            write.write(bucket="b", record=Point("env").tag("device_id", "probe-1").field("untimed", 1.0))
        with pytest.raises(influxdb_client.rest.ApiException) as err:
            client.api_client.set_default_header("Idempotency-Key", "probe-1-bad")
            write.write(bucket="b", record="env,device_id=probe-1 temp=1\nenv,device_id=probe-1 temp=\n")
        assert err.value.status == 400 and "line 2" in err.value.body
    t, t1 = iso(T), iso(T + timedelta(seconds=1))
    got = readings(srv, "probe-1")
    untimed = [g for g in got if g[0] == "env.untimed"]
    assert len(untimed) == 1 and untimed[0][2] == 1
    assert [g for g in got if g[0] not in ("env.untimed",) and g[1] in (t, t1)] == [
        ("env.count", t, 7), ("env.label", t, 'north "wing", 3=4'), ("env.ok", t, 1),
        ("env.temp", t, 21.25), ("env.temp", t1, -0.5), ("power.watts", t, 1500)]
    # the bad body's valid line was written (once), beside the two timed ones
    assert len([g for g in got if g[0] == "env.temp"]) == 3
    assert srv.query("SELECT metadata FROM devices WHERE device_id = 'probe-1'")[0][0] == {"tags": {"site": "lab 2"}}


def test_influxdb_v1_client(server) -> None:
    srv, key = server
    port = int(srv.url.rsplit(":", 1)[1])
    points = [{"measurement": "tank", "tags": {"host": "plc-7", "line": "A"},
               "time": iso(T.replace(microsecond=123000)), "fields": {"level": 0.75, "pumps": 2, "alarm": False}}]
    for gz in (False, True):
        client = influxdb.InfluxDBClient(host="127.0.0.1", port=port, username="telegraf", password=key,
                                         database="plant", gzip=gz)
        assert client.ping() == "2.7.0-telemetry"
        assert client.write_points(points, time_precision="ms") is True
        client.close()
    t = iso(T.replace(microsecond=123000))
    assert readings(srv, "plc-7") == [("tank.alarm", t, 0), ("tank.level", t, 0.75), ("tank.pumps", t, 2)]
    bad = influxdb.InfluxDBClient(host="127.0.0.1", port=port, username="x", password="wrong", database="plant")
    with pytest.raises(influxdb.exceptions.InfluxDBClientError) as err:
        bad.write_points(points, time_precision="ms")
    assert err.value.code == 401


def test_telegraf_bodies(server) -> None:
    srv, key = server
    ns = int(T.timestamp()) * 10**9 + 123456789
    body = (f"cpu,cpu=cpu-total,host=edge-01 usage_idle=97.5,usage_system=0.75,usage_user=1.75 {ns}\n"
            f"mem,host=edge-01 available=6000000000i,used_percent=41.5 {ns}\n"
            f'system,host=edge-01 load1=0.25,n_cpus=2i,uptime_format="1 day,  2:03" {ns}\n')
    headers = {"Authorization": f"Token {key}", "Content-Encoding": "gzip", "User-Agent": "Telegraf/1.32.0",
               "Content-Type": "text/plain; charset=utf-8"}
    for _ in range(2):  # Telegraf retries a batch whose answer it did not get
        r = requests.post(f"{srv.url}/api/v2/write?bucket=telegraf&org=ops", data=gzip.compress(body.encode()),
                          headers=headers, timeout=30)
        assert r.status_code == 204, r.text
    # the 1.x output: CREATE DATABASE at start, then /write?db=
    basic = ("telegraf", key)
    q = requests.post(f"{srv.url}/query", params={"q": 'CREATE DATABASE "telegraf"'}, auth=basic, timeout=30)
    assert q.status_code == 200 and q.json() == {"results": [{"statement_id": 0}]}
    r = requests.post(f"{srv.url}/write?db=telegraf&rp=autogen", auth=basic, data=gzip.compress(body.encode()),
                      headers={"Content-Encoding": "gzip", "User-Agent": "Telegraf/1.32.0"}, timeout=30)
    assert r.status_code == 204, r.text
    t = iso(T)  # ns below the µs dropped
    assert readings(srv, "edge-01") == [
        ("cpu.usage_idle", t, 97.5), ("cpu.usage_system", t, 0.75), ("cpu.usage_user", t, 1.75),
        ("mem.available", t, 6000000000), ("mem.used_percent", t, 41.5), ("system.load1", t, 0.25),
        ("system.n_cpus", t, 2), ("system.uptime_format", t, "1 day,  2:03")]
    assert srv.query("SELECT metadata FROM devices WHERE device_id = 'edge-01'")[0][0] == {
        "tags": {"cpu": "cpu-total"}}


_line = st.one_of(
    st.builds(lambda m, d, v, ts: f"{m},host={d} v={v} {ts}", st.sampled_from(["m", "m\\ x", "a,b"]),
              st.sampled_from(["fz1", "fz2", "bad id"]),
              st.sampled_from(["1", "2.5e3", "7i", "3u", "t", '"s"', '"a\\"b"', "", "nan", "1e999", "x"]),
              st.sampled_from([str(int(T.timestamp()) * 10**9), "", "12", "9" * 30, "-1", "1.5"])),
    st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=40),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(lines=st.lists(_line, min_size=1, max_size=8), gz=st.booleans(), v1=st.booleans())
def test_fuzz_through_http_never_5xx_and_every_rejection_names_its_line(server, lines, gz, v1) -> None:
    srv, key = server
    body = "\n".join(lines).encode()
    path = "/write?db=x" if v1 else "/api/v2/write?bucket=b"
    headers = {"Authorization": f"Token {key}"}
    if gz:
        body, headers["Content-Encoding"] = gzip.compress(body), "gzip"
    r = requests.post(srv.url + path, data=body, headers=headers, timeout=30)
    assert r.status_code in (204, 400), (r.status_code, r.text)
    if r.status_code == 400:
        j = r.json()
        assert j["code"] == "invalid" and j["message"]
        if j["message"] != "writing requires points":
            n = j["line"]
            assert 1 <= n <= len(b"\n".join(x.encode() for x in lines).split(b"\n"))
            assert f"line {n}" in j["message"]
