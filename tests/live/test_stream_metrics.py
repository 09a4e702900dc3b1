"""The stream process's open subscriptions show in the instance's /metrics (answered by a worker)."""

from __future__ import annotations

from tests.live.sse import open_stream
from tests.live_server import wait_for


def _subscribers(server) -> float | None:
    text = server.get("/metrics").text
    for line in text.splitlines():
        if line.startswith("telemetry_stream_subscribers "):
            return float(line.rpartition(" ")[2])
    return None


def test_open_streams_are_counted_in_metrics_and_uncounted_when_closed(server) -> None:
    assert wait_for(lambda: _subscribers(server) == 0.0, timeout=30, interval=0.2)
    readers = [open_stream(server, ("device_id", f"d{i}")) for i in range(3)]
    try:
        assert wait_for(lambda: _subscribers(server) == 3.0, timeout=30, interval=0.2), _subscribers(server)
    finally:
        for r in readers:
            r.close()
    assert wait_for(lambda: _subscribers(server) == 0.0, timeout=30, interval=0.2), _subscribers(server)
