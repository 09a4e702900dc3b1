"""Reconnecting with Last-Event-ID (header or last_event_id) gets exactly what was missed."""

from __future__ import annotations

from tests.live.sse import open_stream
from tests.live_server import wait_for


def post(server, body: str) -> None:
    r = server.post("/telemetry/parse", data=body, headers={"Content-Type": "text/plain"})
    assert r.status_code == 200 and r.json()["durability"] == "committed", r.text


def values(sub) -> list[float]:
    return [e.data["value"] for e in sub.readings()]


def test_reconnect_gets_exactly_the_missed_readings_then_live(server) -> None:
    first = open_stream(server, ("device_id", "res-1"), ("device_id", "res-2"))
    post(server, "device_id:res-1,ts:1700000000,a:1,b:2")
    wait_for(lambda: len(first.readings()) == 2, timeout=30)
    last = first.last_id()
    first.close()

    # While nobody listens: readings of both watched devices, and of one that is not watched.
    post(server, "device_id:res-1,ts:1700000001,a:3,b:4\ndevice_id:res-other,ts:1700000001,a:99")
    post(server, "device_id:res-2,ts:1700000002,a:5")
    post(server, "device_id:res-1,ts:1700000003,a:6")

    again = open_stream(server, ("device_id", "res-1"), ("device_id", "res-2"),
                        headers={"Last-Event-ID": str(last)})
    try:
        wait_for(lambda: len(again.readings()) >= 4, timeout=30)
        post(server, "device_id:res-2,ts:1700000004,a:7")  # live again
        wait_for(lambda: len(again.readings()) >= 5, timeout=30)
        assert values(again) == [3.0, 4.0, 5.0, 6.0, 7.0]
        ids = [e.id for e in again.readings()]
        assert ids == sorted(ids) and min(ids) > last
    finally:
        again.close()


def test_resume_from_inside_one_commit_and_by_query_parameter(server) -> None:
    watch = open_stream(server, ("device_id", "res-3"))
    post(server, "device_id:res-3,ts:1700000000,a:1,b:2,c:3,d:4")  # one request: one stream row
    wait_for(lambda: len(watch.readings()) == 4, timeout=30)
    second = watch.readings()[1]
    watch.close()

    # An EventSource restarted by a page passes the id as last_event_id.
    resumed = open_stream(server, ("device_id", "res-3"), ("last_event_id", str(second.id)))
    try:
        post(server, "device_id:res-3,ts:1700000001,e:5")
        wait_for(lambda: len(resumed.readings()) >= 3, timeout=30)
        assert values(resumed) == [3.0, 4.0, 5.0]
    finally:
        resumed.close()


def test_bad_resume_id_and_unknown_parameter_are_400_naming_them(server) -> None:
    import requests

    from tests.live.sse import stream_token

    token, url = stream_token(server)
    r = requests.get(url, params={"token": token, "last_event_id": "abc"}, timeout=10)
    assert r.status_code == 400 and "last_event_id" in r.json()["error"]
    r = requests.get(url, params={"token": token, "devcie_id": "x"}, timeout=10)
    assert r.status_code == 400 and "devcie_id" in r.json()["error"]
