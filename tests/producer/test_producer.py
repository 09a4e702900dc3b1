"""The producer against the real service, and its backoff against an endpoint that fails first."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from backend.producer.__main__ import parse_args, run
from backend.producer.sender import Refused, Sender


@pytest.mark.parametrize("batch", [1, 4])
def test_producer_lands_five_signals_per_device_and_sample(live_server, batch):
    args = parse_args(["--url", live_server.url, "--devices", "3", "--interval", "0.01", "--count", "6",
                       "--batch", str(batch), "--seed", "7"])
    sender = Sender(live_server.url, live_server.api_key)
    assert run(args, sender) == 18
    sender.close()
    rows = live_server.query("SELECT device_id, metric, count(*) FROM telemetry_readings"
                             " GROUP BY 1, 2 ORDER BY 1, 2")
    names = ["cosine_wave", "damped_oscillation", "random_noise", "random_walk", "sine_wave"]
    assert rows == [(f"sim-{d}", m, 6) for d in (1, 2, 3) for m in names]
    # the values are the signal functions' (sine at t = 0.01 s for sim-1, phase 1.7 s)
    from backend.producer.signals import sine
    first = live_server.query("SELECT value FROM telemetry_readings WHERE device_id = 'sim-1'"
                              " AND metric = 'sine_wave' ORDER BY ts LIMIT 1")[0][0]
    assert first == pytest.approx(sine(0 + 1.7))


class _Flaky(BaseHTTPRequestHandler):
    answers: list[int] = []
    bodies: list[bytes] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
        status = self.answers.pop(0) if self.answers else 200
        payload = b'{"accepted": 5}' if status == 200 else b'{"error": "busy"}'
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def flaky():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Flaky.bodies.clear()
    yield server, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_sender_backs_off_on_503_and_429_then_succeeds(flaky):
    _, url = flaky
    _Flaky.answers[:] = [503, 429, 200]
    result = Sender(url, "k", base_delay=0.01, max_delay=0.05).send({"timestamp": "t", "signals": {"a": 1}})
    assert (result.status, result.attempts, result.accepted) == (200, 3, 5)
    assert len(_Flaky.bodies) == 3 and len(set(_Flaky.bodies)) == 1  # the same body each time


def test_sender_does_not_retry_a_400(flaky):
    _, url = flaky
    _Flaky.answers[:] = [400]
    with pytest.raises(Refused, match="400"):
        Sender(url, "k", base_delay=0.01).send({"signals": {}})
    assert len(_Flaky.bodies) == 1


def test_sender_gives_up_after_max_attempts_when_nothing_listens():
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    with pytest.raises(requests.ConnectionError):
        Sender(f"http://127.0.0.1:{port}", None, max_attempts=3, base_delay=0.01, max_delay=0.02).send({})


def test_bad_arguments_are_refused():
    with pytest.raises(SystemExit):
        parse_args(["--devices", "0"])
    with pytest.raises(SystemExit):
        parse_args(["--interval", "0"])
