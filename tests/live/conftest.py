"""Fixtures: a real gunicorn (2 workers) with its stream process on a free port."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import reset_database
from tests.live_server import LiveServer, free_port, wait_for


def stream_env(**extra: str) -> dict[str, str]:
    return {"STREAM_ENABLED": "1", "STREAM_PORT": str(free_port()), "STREAM_HEARTBEAT_S": "1", **extra}


def wait_stream_up(server: LiveServer) -> None:
    port = server.env["STREAM_PORT"]

    def up() -> bool:
        try:
            return requests.get(f"http://127.0.0.1:{port}/api/stream/health", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    wait_for(up, timeout=60, interval=0.1)


@pytest.fixture
def make_server(database_url: str, tmp_path: Path) -> Iterator[Callable[..., LiveServer]]:
    started: list[LiveServer] = []
    reset_database(database_url)

    def make(name: str = "a", url: str | None = None, stream: bool = True, **env: Any) -> LiveServer:
        extra = {**(stream_env() if stream else {}), **{k: str(v) for k, v in env.items()}}
        srv = LiveServer(url or database_url, tmp_path / name, env=extra, workers=2, threads=4)
        srv.start(wait=60)
        started.append(srv)
        if stream:
            wait_stream_up(srv)
        return srv

    yield make
    for srv in started:
        srv.stop()


@pytest.fixture
def server(make_server: Callable[..., LiveServer]) -> LiveServer:
    return make_server()
