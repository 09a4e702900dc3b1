"""Seed 002's dashboard: a real python-socketio client gets connection_response and telemetry_update."""

from __future__ import annotations

import threading

import pytest
import socketio

from tests.live.sse import stream_token
from tests.live_server import wait_for


class Recorder:
    def __init__(self) -> None:
        self.client = socketio.Client(reconnection=False)
        self.events: list[tuple[str, object]] = []
        self._lock = threading.Lock()
        for name in ("connection_response", "telemetry_update"):
            self.client.on(name, self._record(name))

    def _record(self, name: str):
        def handler(data: object) -> None:
            with self._lock:
                self.events.append((name, data))
        return handler

    def of(self, name: str) -> list[object]:
        with self._lock:
            return [d for n, d in self.events if n == name]


def test_seed002_post_reaches_a_socketio_client(server) -> None:
    token, url = stream_token(server)
    base = url.removesuffix("/api/stream")
    rec = Recorder()
    rec.client.connect(base, auth={"token": token}, wait_timeout=30)
    try:
        wait_for(lambda: rec.of("connection_response"), timeout=30)
        message = {"timestamp": "2026-01-02T03:04:05Z",
                   "signals": {"sine_wave": 1.5, "cosine_wave": -2.0, "random_noise": 0.25}}
        r = server.post("/api/telemetry", json=message)
        assert r.status_code in (200, 201) and r.json()["status"] == "success", r.text
        (update,) = wait_for(lambda: rec.of("telemetry_update"), timeout=30)
        assert update["timestamp"] == "2026-01-02T03:04:05Z"
        assert update["signals"] == message["signals"]
    finally:
        rec.client.disconnect()


def test_socketio_without_token_is_refused_unless_public(make_server) -> None:
    private = make_server("private")
    _, url = stream_token(private)
    rec = Recorder()
    with pytest.raises(socketio.exceptions.ConnectionError):
        rec.client.connect(url.removesuffix("/api/stream"), wait_timeout=30)

    public = make_server("public", STREAM_SOCKETIO_PUBLIC="1")
    _, url = stream_token(public)
    rec = Recorder()
    rec.client.connect(url.removesuffix("/api/stream"), wait_timeout=30)
    try:
        wait_for(lambda: rec.of("connection_response"), timeout=30)
    finally:
        rec.client.disconnect()
