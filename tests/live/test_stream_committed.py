"""Only committed readings are streamed: not rejected ones, not spooled ones until replayed."""

from __future__ import annotations

import psycopg

from tests.live.sse import open_stream
from tests.live_server import wait_for


def mark(database_url: str, device: str, n: int) -> None:
    """A reading committed straight into the table: once it is streamed, everything committed
    before it has been (ids are in commit order), so absence before it is proven."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO telemetry_readings (device_id, metric, ts, value) VALUES (%s, 'mark', to_timestamp(%s), %s)",
                     (device, 1_600_000_000 + n, n))


def marks(sub) -> list[float]:
    return [e.data["value"] for e in sub.readings() if e.data["metric"] == "mark"]


def test_rejected_requests_and_lines_stream_nothing(server, database_url) -> None:
    sub = open_stream(server, ("device_id", "rej-1"))
    try:
        r = server.post("/telemetry/parse", data=b'{"device_id": "rej-1", "temp": ', headers={
            "Content-Type": "application/json"})
        assert 400 <= r.status_code < 500, r.text
        r = server.post("/telemetry/parse", data="device_id:rej-1,temp:1", headers={"Content-Type": "image/png"})
        assert r.status_code == 415, r.text
        # One valid line, one bad line: only the valid reading is stored, and streamed.
        r = server.post("/telemetry/parse?store=true",
                        data="device_id:rej-1,ts:1700000001,temp:5\ndevice_id:rej-1,ts:notatime,temp:6",
                        headers={"Content-Type": "text/plain"})
        assert r.status_code in (200, 207), r.text
        # A re-send of a stored reading is a duplicate: nothing new, nothing streamed.
        r = server.post("/telemetry/parse", data="device_id:rej-1,ts:1700000001,temp:5",
                        headers={"Content-Type": "text/plain"})
        assert r.status_code == 200 and r.json()["duplicates"] == 1, r.text
        mark(database_url, "rej-1", 1)
        wait_for(lambda: marks(sub) == [1.0], timeout=30)
        assert [(e.data["metric"], e.data["value"]) for e in sub.readings()] == [("temp", 5.0), ("mark", 1.0)]
    finally:
        sub.close()


def test_spooled_reading_is_streamed_once_when_replayed(make_server, db_proxy, database_url) -> None:
    # The service reaches PostgreSQL through a proxy the test cuts; the stream process directly.
    server = make_server("spool", url=db_proxy.url, STREAM_DATABASE_URL=database_url, FLUSH_INTERVAL="0.1")
    sub = open_stream(server, ("device_id", "spool-1"))
    try:
        db_proxy.down()
        r = server.post("/telemetry/parse", data="device_id:spool-1,ts:1700000005,temp:42",
                        headers={"Content-Type": "text/plain"})
        assert r.status_code == 200 and r.json()["durability"] == "spooled", r.text
        mark(database_url, "spool-1", 1)
        wait_for(lambda: marks(sub) == [1.0], timeout=30)
        assert [e.data["metric"] for e in sub.readings()] == ["mark"]  # acknowledged, not committed: not shown

        db_proxy.up()
        wait_for(lambda: [e for e in sub.readings() if e.data["metric"] == "temp"], timeout=90)
        rows = server.query("SELECT count(*) FROM telemetry_readings WHERE device_id = 'spool-1' AND metric = 'temp'")
        assert rows == [(1,)]
        mark(database_url, "spool-1", 2)
        wait_for(lambda: marks(sub) == [1.0, 2.0], timeout=30)
        temps = [e.data for e in sub.readings() if e.data["metric"] == "temp"]
        assert temps == [{"device_id": "spool-1", "metric": "temp", "ts": "2023-11-14T22:13:25Z",
                          "value": 42.0, "text": None}]
    finally:
        sub.close()
