"""A TCP proxy in front of PostgreSQL that a test can cut: the database "goes away" for the
service without stopping the shared server.

    up         forward bytes both ways
    down       close every open connection and refuse new ones at once (server gone,
               connection refused/reset: what a stopped or restarting database looks like)
    blackhole  stop forwarding and accept new connections without ever answering
               (a far-away database behind a broken network: everything hangs)
"""

from __future__ import annotations

import selectors
import socket
import threading
from typing import Any

import psycopg

MODES = ("up", "down", "blackhole")


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self._listener.setblocking(False)
        self.port = self._listener.getsockname()[1]
        self.mode = "up"
        self._want = "up"
        self._pairs: dict[socket.socket, socket.socket] = {}
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._changed = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="db-proxy", daemon=True)
        self.connections_total = 0

    @classmethod
    def for_url(cls, database_url: str) -> TcpProxy:
        info = psycopg.conninfo.conninfo_to_dict(database_url)
        proxy = cls(str(info.get("host") or "127.0.0.1"), int(info.get("port") or 5432))
        info.update(host="127.0.0.1", port=str(proxy.port))
        proxy.url = psycopg.conninfo.make_conninfo(**info)
        return proxy

    url: str = ""

    def start(self) -> TcpProxy:
        self._thread.start()
        return self

    def set_mode(self, mode: str) -> None:
        assert mode in MODES, mode
        self._want = mode
        self._changed.clear()
        self._changed.wait(5)

    def up(self) -> None:
        self.set_mode("up")

    def down(self) -> None:
        self.set_mode("down")

    def blackhole(self) -> None:
        self.set_mode("blackhole")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._close_all()
        self._listener.close()

    # ---- the loop ----------------------------------------------------------------------

    def _close_all(self) -> None:
        for a in list(self._pairs):
            _close(a)
        self._pairs.clear()
        for s in self._held:
            _close(s)
        self._held.clear()

    def _apply_mode(self, sel: selectors.BaseSelector) -> None:
        want = self._want
        if want != self.mode:
            if want == "down" or (self.mode == "blackhole" and want == "up"):
                for s in list(self._pairs):
                    _unregister(sel, s)
                self._close_all()
            if want == "blackhole":
                for s in list(self._pairs):
                    _unregister(sel, s)
            if want == "up":
                for s in list(self._pairs):
                    sel.register(s, selectors.EVENT_READ)
            self.mode = want
        self._changed.set()

    def _loop(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._listener, selectors.EVENT_READ)
        while not self._stop.is_set():
            self._apply_mode(sel)
            for key, _ in sel.select(timeout=0.05):
                sock: Any = key.fileobj
                if sock is self._listener:
                    self._accept(sel)
                    continue
                peer = self._pairs.get(sock)
                if peer is None:
                    continue
                try:
                    data = sock.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    self._drop(sel, sock, peer)
                    continue
                try:
                    peer.setblocking(True)
                    peer.sendall(data)
                except OSError:
                    self._drop(sel, sock, peer)
        sel.close()

    def _accept(self, sel: selectors.BaseSelector) -> None:
        try:
            client, _ = self._listener.accept()
        except BlockingIOError:
            return
        self.connections_total += 1
        if self.mode == "down":
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            _close(client)  # RST: like a refused connection
            return
        if self.mode == "blackhole":
            self._held.append(client)
            return
        try:
            upstream = self._connect_upstream()
        except OSError:
            _close(client)
            return
        self._pairs[client] = upstream
        self._pairs[upstream] = client
        sel.register(client, selectors.EVENT_READ)
        sel.register(upstream, selectors.EVENT_READ)

    def _connect_upstream(self) -> socket.socket:
        host, port = self.target
        if host.startswith("/"):
            # The embedded PostgreSQL listens on a Unix socket only (libpq's host=/dir form).
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            upstream.settimeout(5)
            upstream.connect(f"{host}/.s.PGSQL.{port}")
            return upstream
        return socket.create_connection(self.target, timeout=5)

    def _drop(self, sel: selectors.BaseSelector, a: socket.socket, b: socket.socket) -> None:
        for s in (a, b):
            _unregister(sel, s)
            self._pairs.pop(s, None)
            _close(s)


def _unregister(sel: selectors.BaseSelector, s: socket.socket) -> None:
    try:
        sel.unregister(s)
    except (KeyError, ValueError):
        pass


def _close(s: socket.socket) -> None:
    try:
        s.close()
    except OSError:
        pass
