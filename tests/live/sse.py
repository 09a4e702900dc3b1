"""A real Server-Sent Events reader for the tests: a thread parsing the wire format."""

from __future__ import annotations

import http.client
import json
import socket
import threading
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit

import requests


@dataclass
class Event:
    event: str
    data: Any
    id: int | None


@dataclass
class SSEReader:
    url: str
    params: list[tuple[str, str]]
    headers: dict[str, str] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    comments: int = 0
    status: int | None = None
    error: str | None = None
    closed: bool = False

    def start(self) -> SSEReader:
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(30), "stream did not answer"
        assert self.status == 200, (self.status, self.error)
        return self

    def _run(self) -> None:
        u = urlsplit(self.url)
        self._conn = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
        try:
            self._conn.request("GET", u.path + "?" + urlencode(self.params), headers=self.headers)
            resp = self._conn.getresponse()
            self.status = resp.status
            if resp.status != 200:
                self.error = resp.read().decode(errors="replace")
                self._ready.set()
                return
            self._ready.set()
            self._parse(resp)
        except (OSError, http.client.HTTPException) as exc:
            self.error = str(exc)
        finally:
            self.closed = True
            self._ready.set()

    def _parse(self, resp: http.client.HTTPResponse) -> None:
        kind, data, eid = "message", [], None
        while True:
            line = resp.readline()  # decoded: chunked framing must be right too
            if not line:
                return
            line = line.decode().rstrip("\n")
            if line == "":
                if data:
                    self.events.append(Event(kind, json.loads("\n".join(data)), eid))
                kind, data, eid = "message", [], None
            elif line.startswith(":"):
                self.comments += 1
            else:
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "event":
                    kind = value
                elif name == "data":
                    data.append(value)
                elif name == "id":
                    eid = int(value)

    def readings(self) -> list[Event]:
        return [e for e in self.events if e.event == "reading"]

    def last_id(self) -> int | None:
        ids = [e.id for e in self.events if e.id is not None]
        return ids[-1] if ids else None

    def close(self) -> None:
        try:
            self._conn.sock.shutdown(socket.SHUT_RDWR)  # type: ignore[union-attr]
        except (OSError, AttributeError):
            pass
        self._thread.join(10)


def stream_token(server: Any) -> tuple[str, str]:
    """(token, stream_url) from POST /api/stream/token with the server's admin key."""
    r = requests.post(server.url + "/api/stream/token", headers={"X-API-Key": server.api_key}, timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    return body["token"], body["stream_url"]


def open_stream(server: Any, *filters: tuple[str, str], headers: dict[str, str] | None = None) -> SSEReader:
    token, url = stream_token(server)
    return SSEReader(url, [("token", token), *filters], headers or {}).start()
