"""A subscriber that stops reading: ingest goes on, the others get everything, it is told."""

from __future__ import annotations

import http.client
import socket
import threading

import requests

from tests.live.sse import SSEReader, open_stream, stream_token
from tests.live_server import wait_for

TOTAL_REQUESTS, PER_REQUEST = 40, 1000


class TinyWindowConnection(http.client.HTTPConnection):
    """A client socket with a 4 KB receive buffer: when it stops reading, the server sees it at once."""

    def connect(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.settimeout(120)
        self.sock.connect((self.host, self.port))


class StalledReader(SSEReader):
    """Opens the stream, reads nothing until `resume()`."""

    def start(self) -> StalledReader:
        self._go = threading.Event()
        return super().start()  # type: ignore[return-value]

    def resume(self) -> None:
        self._go.set()

    def _parse(self, resp: http.client.HTTPResponse) -> None:
        self._go.wait()
        super()._parse(resp)


def stalled(server, *filters: tuple[str, str]) -> StalledReader:
    token, url = stream_token(server)
    reader = StalledReader(url, [("token", token), *filters])
    import tests.live.sse as sse

    original = sse.http.client.HTTPConnection
    sse.http.client.HTTPConnection = TinyWindowConnection  # only for this reader's connect
    try:
        return reader.start()
    finally:
        sse.http.client.HTTPConnection = original


def body(i: int) -> str:
    base = 1_700_000_000 + i * PER_REQUEST
    return "\n".join(f"device_id:slow-1,ts:{base + k},v:{k}" for k in range(PER_REQUEST))


def test_stalled_subscriber_is_told_what_it_missed_and_delays_no_one(make_server) -> None:
    server = make_server(STREAM_QUEUE_EVENTS="200")
    stuck = stalled(server, ("device_id", "slow-1"))
    healthy = open_stream(server, ("device_id", "slow-1"))
    stream_health = f"http://127.0.0.1:{server.env['STREAM_PORT']}/api/stream/health"
    try:
        for i in range(TOTAL_REQUESTS):  # every request is acknowledged as committed
            r = server.post("/telemetry/parse", data=body(i), headers={"Content-Type": "text/plain"})
            assert r.status_code == 200 and r.json()["durability"] == "committed", r.text[:300]
        total = TOTAL_REQUESTS * PER_REQUEST
        # The healthy subscriber got every reading while the stalled one sat on a full queue.
        try:
            wait_for(lambda: len(healthy.readings()) >= total, timeout=120)
        except AssertionError:
            raise AssertionError(f"healthy got {len(healthy.readings())} of {total}, closed={healthy.closed}"
                                 f" {healthy.error}; stream: {requests.get(stream_health, timeout=10).json()}"
                                 f"\n{server.log_tail()}") from None
        assert len(healthy.readings()) == total
        assert not [e for e in healthy.events if e.event == "missed"]
        dropped = requests.get(stream_health, timeout=10).json()["missed_events"]
        assert dropped > 0  # the stalled one overflowed while ingest was acknowledged

        stuck.resume()

        def accounted() -> bool:
            missed = sum(e.data["missed"] for e in stuck.events if e.event == "missed")
            return len(stuck.readings()) + missed == total

        wait_for(accounted, timeout=120)
        missed_events = [e for e in stuck.events if e.event == "missed"]
        assert missed_events and sum(e.data["missed"] for e in missed_events) == dropped
        ids = [e.id for e in stuck.readings()]
        assert ids == sorted(ids) and len(set(ids)) == len(ids)
    finally:
        stuck.resume()
        stuck.close()
        healthy.close()
