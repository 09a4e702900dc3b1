"""Store and forward against a real HTTP server that records requests and can fail.

The API is a stdlib http.server on a loopback port; "down" means the socket is closed
(connection refused), not a mocked exception.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from backend.modbus.forwarder import Forwarder, _parse_retry_after
from backend.modbus.queue import DiskQueue
from backend.modbus.simulator import SimServer, SimulatedDevice
from tests.live_server import free_port, wait_for

pytestmark = pytest.mark.timeout(60)
ROOT = Path(__file__).resolve().parents[2]


class RecordingApi:
    """A tiny ingest API: records every request; `respond` decides the answer."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.requests: list[dict[str, Any]] = []
        self.accepted: list[dict[str, Any]] = []  # records of 2xx answers, in arrival order
        self.lock = threading.Lock()
        self.respond: Callable[[list[dict[str, Any]]], tuple[int, dict[str, str], dict[str, Any]]] = self.ok
        self._server: ThreadingHTTPServer | None = None

    @staticmethod
    def ok(records: list[dict[str, Any]]) -> tuple[int, dict[str, str], dict[str, Any]]:
        return 200, {}, {"success": True, "batch_id": "b", "accepted": len(records), "rejected": []}

    def start(self) -> RecordingApi:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server naming
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                records = json.loads(body)
                status, headers, answer = api.respond(records)
                with api.lock:
                    api.requests.append(
                        {"path": self.path, "headers": dict(self.headers), "records": records, "status": status}
                    )
                    if 200 <= status < 300:
                        api.accepted.extend(records)
                data = json.dumps(answer).encode()
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def accepted_seq(self) -> list[int]:
        with self.lock:
            return [r["seq"] for r in self.accepted]


@pytest.fixture
def api() -> Iterator[RecordingApi]:
    server = RecordingApi().start()
    yield server
    server.stop()


def records(start: int, n: int, device: str = "nivus-1") -> list[dict[str, Any]]:
    return [
        {"device_id": device, "ts": f"2026-01-01T00:00:{i % 60:02d}.{i:03d}+00:00", "seq": i, "flow_rate": i * 0.5}
        for i in range(start, start + n)
    ]


def make_forwarder(queue: DiskQueue, api: RecordingApi, **kw: Any) -> Forwarder:
    opts = {"batch_size": 10, "timeout": 2.0, "retry_min": 0.02, "retry_max": 0.1, "auth_retry": 0.1, **kw}
    return Forwarder(queue, api.url + "/api/ingest", "secret-key", **opts)


def test_batches_are_posted_in_order_with_the_api_key(tmp_path: Path, api: RecordingApi):
    queue = DiskQueue(tmp_path / "q.sqlite3")
    fwd = make_forwarder(queue, api)
    fwd.submit(records(0, 25))
    assert fwd.flush(timeout=10)
    assert api.accepted_seq() == list(range(25))
    assert [len(r["records"]) for r in api.requests] == [10, 10, 5]
    first = api.requests[0]
    assert first["path"] == "/api/ingest"
    assert first["headers"]["X-API-Key"] == "secret-key"
    assert first["headers"]["Content-Type"] == "application/json"
    assert len(queue) == 0


def test_readings_taken_while_api_is_down_arrive_afterwards_in_order_none_twice(tmp_path: Path):
    api = RecordingApi()  # not started: connection refused
    queue = DiskQueue(tmp_path / "q.sqlite3")
    fwd = make_forwarder(queue, api)
    fwd.start()
    try:
        for i in range(0, 30, 3):
            fwd.submit(records(i, 3))
        wait_for(lambda: fwd.last_outcome is not None and fwd.last_outcome.kind == "retry")
        assert len(queue) == 30
        # Refused, then 503 and 429 with Retry-After for a while, then healthy.
        answers = iter([(503, {"Retry-After": "0"}, {}), (429, {"Retry-After": "0"}, {}), (500, {}, {})])
        api.respond = lambda recs: next(answers, None) or RecordingApi.ok(recs)
        api.start()
        fwd.submit(records(30, 5))
        wait_for(lambda: len(queue) == 0)
        assert api.accepted_seq() == list(range(35))
        assert [r["status"] for r in api.requests[:3]] == [503, 429, 500]
    finally:
        fwd.stop()
        api.stop()


def test_queue_survives_a_restart(tmp_path: Path, api: RecordingApi):
    path = tmp_path / "q.sqlite3"
    api.respond = lambda recs: (503, {}, {})
    first = DiskQueue(path)
    fwd = make_forwarder(first, api)
    fwd.submit(records(0, 12))
    assert fwd.send_once().kind == "retry"
    first.close()  # the process ends with 12 records unsent

    api.respond = RecordingApi.ok
    second = DiskQueue(path)
    assert len(second) == 12
    second.put(records(12, 3))
    assert make_forwarder(second, api).flush(timeout=10)
    assert api.accepted_seq() == list(range(15))
    second.close()


def test_bad_payload_is_dead_lettered_and_the_rest_still_goes_in_order(tmp_path: Path, api: RecordingApi):
    def respond(recs):
        if any(r.get("poison") for r in recs):
            return 422, {}, {"success": False, "error": "field 'poison': not a value"}
        return RecordingApi.ok(recs)

    api.respond = respond
    queue = DiskQueue(tmp_path / "q.sqlite3")
    fwd = make_forwarder(queue, api, batch_size=8)
    batch = records(0, 20)
    batch[13]["poison"] = {"nested": {"too": "deep"}}
    fwd.submit(batch)
    assert fwd.flush(timeout=10)
    assert api.accepted_seq() == [i for i in range(20) if i != 13]
    dead = queue.dead_letters()
    assert len(dead) == 1 and json.loads(dead[0]["payload"])["seq"] == 13 and dead[0]["status"] == 422
    poisoned_posts = [r for r in api.requests if any(x.get("poison") for x in r["records"])]
    # Bisection 8 -> 4 -> 2 -> 1 finds it in four posts; it is never retried after that.
    assert len(poisoned_posts) == 4
    assert poisoned_posts[-1]["records"] == [batch[13]]
    # Batches are full size again after the bad record is gone.
    assert len(api.requests[-1]["records"]) == 6  # 14..19


def test_auth_failure_keeps_records_and_retries_slowly(tmp_path: Path, api: RecordingApi):
    api.respond = lambda recs: (401, {}, {"success": False, "error": "invalid API key"})
    queue = DiskQueue(tmp_path / "q.sqlite3")
    fwd = make_forwarder(queue, api, auth_retry=123.0)
    fwd.submit(records(0, 3))
    outcome = fwd.send_once()
    assert (outcome.kind, outcome.status, outcome.delay) == ("retry", 401, 123.0)
    assert len(queue) == 3 and queue.dead_letters() == []
    api.respond = RecordingApi.ok
    assert fwd.flush(timeout=10)
    assert api.accepted_seq() == [0, 1, 2]


def test_retry_after_is_honoured_and_capped(tmp_path: Path, api: RecordingApi):
    api.respond = lambda recs: (429, {"Retry-After": "7"}, {})
    queue = DiskQueue(tmp_path / "q.sqlite3")
    fwd = make_forwarder(queue, api, retry_min=0.01, retry_max=60)
    fwd.submit(records(0, 1))
    assert fwd.send_once().delay == 7.0
    api.respond = lambda recs: (503, {"Retry-After": "3600"}, {})
    assert fwd.send_once().delay == 60
    assert _parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    assert _parse_retry_after("garbage") is None
    assert len(queue) == 1


def test_rejected_items_of_an_accepted_batch_are_kept_as_dead_letters(tmp_path: Path, api: RecordingApi):
    api.respond = lambda recs: (
        200,
        {},
        {"success": True, "accepted": len(recs) - 1, "rejected": [{"position": 1, "reason": "timestamp: before 2000"}]},
    )
    queue = DiskQueue(tmp_path / "q.sqlite3")
    fwd = make_forwarder(queue, api)
    fwd.submit(records(0, 3))
    assert fwd.flush(timeout=10)
    assert len(queue) == 0
    (dead,) = queue.dead_letters()
    assert json.loads(dead["payload"])["seq"] == 1 and "before 2000" in dead["reason"]
    assert queue.requeue_dead_letters() == 1 and len(queue) == 1 and queue.dead_letters() == []


@pytest.mark.parametrize("overflow", ["drop_oldest", "drop_newest"])
def test_queue_is_bounded(tmp_path: Path, api: RecordingApi, overflow: str):
    queue = DiskQueue(tmp_path / "q.sqlite3", max_records=10, overflow=overflow)
    for i in range(0, 25, 5):
        queue.put(records(i, 5))
    assert len(queue) == 10 and queue.dropped == 15
    assert make_forwarder(queue, api).flush(timeout=10)
    assert api.accepted_seq() == (list(range(15, 25)) if overflow == "drop_oldest" else list(range(10)))
    # Reopening counts what is on disk, so the bound holds across restarts too.
    queue.put(records(100, 4))
    queue.close()
    again = DiskQueue(tmp_path / "q.sqlite3", max_records=10, overflow=overflow)
    assert len(again) == 4
    again.close()


def test_nan_never_reaches_the_queue(tmp_path: Path):
    queue = DiskQueue(tmp_path / "q.sqlite3")
    with pytest.raises(ValueError):
        queue.put([{"device_id": "d", "ts": "2026-01-01T00:00:00+00:00", "x": float("nan")}])
    assert len(queue) == 0


def _queued_payloads(path: Path) -> list[dict[str, Any]]:
    # A second reader on the live WAL database, as an operator's sqlite3 shell would be.
    db = sqlite3.connect(path)
    try:
        return [json.loads(p) for (p,) in db.execute("SELECT payload FROM outbox ORDER BY id")]
    except sqlite3.OperationalError:  # the poller has not created the table yet
        return []
    finally:
        db.close()


def test_poller_process_killed_while_api_down_loses_nothing(tmp_path: Path):
    """The real CLI process: poll while the API is down, kill -9, restart, deliver."""
    modbus_port = free_port()
    api = RecordingApi()  # down for now
    dev = SimulatedDevice(1)
    dev.set_nivus(12.5, 100.0, 15.0, 0)
    config = tmp_path / "poller.toml"
    config.write_text(
        f"""
[api]
url = "{api.url}"
api_key = "secret-key"
batch_size = 50
timeout = 2
retry_min = 0.05
retry_max = 0.2

[queue]
path = "queue.sqlite3"

[connections.lab]
transport = "tcp"
host = "127.0.0.1"
port = {modbus_port}
timeout = 0.5

[[devices]]
id = "nivus-1"
connection = "lab"
unit = 1
map = "nivus"
poll_period = 0.05
"""
    )
    queue_path = tmp_path / "queue.sqlite3"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "backend.modbus", "--log-level", "WARNING", "run", "--config", str(config)]
    with SimServer([dev], port=modbus_port):
        first = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_for(lambda: queue_path.exists() and len(_queued_payloads(queue_path)) >= 10)
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait(10)
        taken_while_down = _queued_payloads(queue_path)
        assert len(taken_while_down) >= 10
        assert all(r["flow_rate"] == 12.5 and r["modbus_ok"] == 1 for r in taken_while_down)

        api.start()
        second = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_for(lambda: len(api.accepted) >= len(taken_while_down) + 5)
        finally:
            second.send_signal(signal.SIGTERM)
            assert second.wait(15) == 0
            api.stop()
    sent = [(r["device_id"], r["ts"]) for r in api.accepted]
    assert len(sent) == len(set(sent)), "a record was sent twice"
    assert sent[: len(taken_while_down)] == [(r["device_id"], r["ts"]) for r in taken_while_down]
    assert sent == sorted(sent, key=lambda k: k[1]), "records out of order"


class SilentApi:
    """Accepts connections and never answers: the request times out."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize(
    ("where", "cause"),
    [
        ("refused", "connection refused"),
        ("silent", "timed out"),
        ("unresolvable", "cannot resolve host 'fluxio-api.invalid'"),
    ],
)
def test_outage_warning_says_its_cause_in_full(tmp_path: Path, caplog: pytest.LogCaptureFixture, where: str,
                                               cause: str):
    silent = SilentApi() if where == "silent" else None
    url = {
        "refused": RecordingApi().url,  # nothing listens there
        "silent": silent.url if silent else "",
        "unresolvable": "http://fluxio-api.invalid:5000",  # .invalid never resolves (RFC 6761)
    }[where]
    queue = DiskQueue(tmp_path / "q.sqlite3")
    fwd = Forwarder(queue, url + "/api/ingest", "k", timeout=0.3)
    fwd.submit(records(0, 2))
    try:
        with caplog.at_level(logging.WARNING, logger="backend.modbus.forwarder"):
            outcome = fwd.send_once()
    finally:
        if silent:
            silent.close()
        queue.close()
    assert outcome.kind == "retry"
    warnings = [r.getMessage() for r in caplog.records if "ingest API unavailable" in r.getMessage()]
    assert len(warnings) == 1, caplog.text
    assert f"ingest API unavailable ({cause}" in warnings[0]
    assert f" at {url}/api/ingest); 2 record(s) queued" in warnings[0]
    assert "Caused by" not in warnings[0] and "HTTPConnectionPool" not in warnings[0]
