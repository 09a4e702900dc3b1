"""Slow clients for the slow-client tests: sockets that send part of a request and then wait.

Two kinds, as in issue 11: half a header block (no final CRLF), and a complete header with a
body that trickles in (or stalls). A background thread watches every socket and records when
the server closed it, so a test can wait for "closed after the configured timeout".
"""

from __future__ import annotations

import selectors
import socket
import statistics
import threading
import time
from dataclasses import dataclass, field

import requests

SLOW_HEADER = b"GET /health HTTP/1.1\r\nHost: x\r\n"  # the final CRLF never comes
SLOW_BODY_LENGTH = 100_000


@dataclass
class SlowSocket:
    kind: str  # "header" or "body"
    sock: socket.socket
    opened: float
    closed: float | None = None
    answer: bytes = b""  # whatever the server sent before closing (a 408, say)


@dataclass
class SlowClients:
    """`headers` slow-header and `bodies` slow-body connections to host:port.

    trickle: seconds between two body bytes (one byte per socket); None: the body stalls
    after its first byte.
    """

    host: str
    port: int
    headers: int
    bodies: int
    trickle: float | None = 1.0
    path: str = "/telemetry/parse"
    sockets: list[SlowSocket] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._lock = threading.Lock()

    def open(self) -> SlowClients:
        body_head = (f"POST {self.path} HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
                     f"Content-Length: {SLOW_BODY_LENGTH}\r\n\r\n").encode() + b"a"
        for kind, count, first in (("header", self.headers, SLOW_HEADER), ("body", self.bodies, body_head)):
            for _ in range(count):
                s = socket.create_connection((self.host, self.port), timeout=5)
                s.sendall(first)
                s.setblocking(False)
                self.sockets.append(SlowSocket(kind, s, time.monotonic()))
        self._thread.start()
        return self

    def _watch(self) -> None:
        sel = selectors.DefaultSelector()
        for slow in self.sockets:
            sel.register(slow.sock, selectors.EVENT_READ, slow)
        next_byte = time.monotonic() + (self.trickle or 0)
        while not self._stop.is_set() and sel.get_map():
            for key, _ in sel.select(timeout=0.05):
                slow = key.data
                try:
                    data = slow.sock.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if data:
                    slow.answer += data
                    continue
                self._mark_closed(slow, sel)
            if self.trickle is not None and time.monotonic() >= next_byte:
                next_byte += self.trickle
                for slow in self.sockets:
                    if slow.kind == "body" and slow.closed is None:
                        try:
                            slow.sock.send(b"a")
                        except OSError:
                            self._mark_closed(slow, sel)
        sel.close()

    def _mark_closed(self, slow: SlowSocket, sel: selectors.BaseSelector) -> None:
        with self._lock:
            if slow.closed is None:
                slow.closed = time.monotonic()
        try:
            sel.unregister(slow.sock)
        except (KeyError, ValueError):
            pass

    def open_count(self) -> int:
        with self._lock:
            return sum(1 for s in self.sockets if s.closed is None)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for slow in self.sockets:
            slow.sock.close()

    def __enter__(self) -> SlowClients:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()


def keep_posting(url: str, api_key: str, duration: float, interval: float = 0.1,
                 device: str = "normal-client", timeout: float = 5.0) -> list[float]:
    """POST one reading every `interval` s for `duration` s, a new connection each time (as a
    gateway that does not keep its connection would); returns each answer's latency in
    seconds, `timeout` for a request that got no answer. Fails on any answer but 200."""
    latencies: list[float] = []
    end = time.monotonic() + duration
    i = 0
    while time.monotonic() < end:
        t0 = time.monotonic()
        try:
            r = requests.post(url + "/telemetry/parse", data=f"seq:{i}",
                              headers={"Authorization": f"Bearer {api_key}", "X-Device-Id": device,
                                       "Content-Type": "text/plain"}, timeout=timeout)
            assert r.status_code == 200, (r.status_code, r.text)
            latencies.append(time.monotonic() - t0)
        except requests.RequestException:
            latencies.append(timeout)
        i += 1
        time.sleep(max(0.0, interval - (time.monotonic() - t0)))
    return latencies


def p99(latencies: list[float]) -> float:
    return statistics.quantiles(latencies, n=100, method="inclusive")[98] if len(latencies) > 1 else latencies[0]
