"""A reading committed by any gunicorn worker, of this instance or another, reaches every stream."""

from __future__ import annotations

import requests

from tests.live.sse import open_stream
from tests.live_server import wait_for
from tests.loadgen import worker_statuses


def post_fresh(url: str, key: str, body: str) -> requests.Response:
    # A new connection per request: gunicorn hands it to whichever worker accepts first.
    with requests.Session() as s:
        return s.post(url + "/telemetry/parse", data=body, timeout=30,
                      headers={"X-API-Key": key, "Content-Type": "text/plain", "Connection": "close"})


def test_readings_from_both_workers_reach_one_subscriber(server) -> None:
    sub = open_stream(server, ("device_id", "across-1"))
    try:
        sent = []
        for i in range(40):
            body = f"device_id:across-1,ts:{1_700_000_000 + i},seq:{i}"
            r = post_fresh(server.url, server.api_key, body)
            assert r.status_code == 200 and r.json()["durability"] == "committed", r.text
            sent.append(float(i))
        # Which worker committed what: each worker reports its own counts.
        statuses = wait_for(lambda: (s := worker_statuses(server, attempts=30)) and len(s) >= 2 and s)
        writers = [pid for pid, st in statuses.items() if st["written_total"] > 0]
        assert len(writers) >= 2, statuses

        wait_for(lambda: len(sub.readings()) >= len(sent), timeout=30)
        got = [e.data["value"] for e in sub.readings()]
        assert sorted(got) == sent  # every reading once, whichever worker wrote it
        assert [e.id for e in sub.readings()] == sorted(e.id for e in sub.readings())
        assert {e.data["device_id"] for e in sub.readings()} == {"across-1"}
        assert {e.data["metric"] for e in sub.readings()} == {"seq"}
        # Heartbeats (STREAM_HEARTBEAT_S=1 here): comment lines keep idle streams and proxies alive.
        seen = sub.comments
        wait_for(lambda: sub.comments >= seen + 2, timeout=30)
    finally:
        sub.close()


def test_reading_written_through_one_instance_reaches_a_stream_of_another(make_server) -> None:
    writer = make_server("writer", stream=False)  # instance A: no stream process at all
    reader = make_server("reader")  # instance B, same database, its own stream process
    sub = open_stream(reader, ("device_id", "across-2"), ("metric", "temp"))
    try:
        r = post_fresh(writer.url, writer.api_key, "device_id:across-2,ts:1700000000,temp:21.5,hum:40")
        assert r.status_code == 200, r.text
        wait_for(lambda: sub.readings(), timeout=30)
        (ev,) = sub.readings()
        assert ev.data == {"device_id": "across-2", "metric": "temp", "ts": "2023-11-14T22:13:20Z",
                           "value": 21.5, "text": None}
    finally:
        sub.close()
