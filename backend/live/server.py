"""The stream process's HTTP side (aiohttp): `GET /api/stream` as Server-Sent Events.

One coroutine per open stream, one event loop, one thread: an idle stream costs a few
kilobytes, not a gthread thread (docs/stream.md has the figures and the reasons).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

import orjson
from aiohttp import web

from backend.config import Config
from backend.live.feed import EventFeed
from backend.live.frames import HEARTBEAT, ROW_SPAN, missed_frame, retry_frame, split_event_id
from backend.live.hub import Hub, Subscriber
from backend.live.tokens import StreamTokens, TokenError

log = logging.getLogger(__name__)

PARAMS = {"token", "device_id", "metric", "last_event_id"}
MAX_FILTER_VALUES = 100
MAX_NAME_LEN = 200
SEND_BUFFER_BYTES = 64 * 1024
DIRECT_WRITE_LIMIT = 64 * 1024  # bytes waiting in the transport before the hub queues instead


class StreamParamError(ValueError):
    pass


def parse_filters(query: dict[str, list[str]]) -> tuple[frozenset[str] | None, frozenset[str] | None]:
    out: list[frozenset[str] | None] = []
    for name in ("device_id", "metric"):
        values = [v for v in query.get(name, []) for v in v.split(",") if v]
        if len(values) > MAX_FILTER_VALUES:
            raise StreamParamError(f"{name}: at most {MAX_FILTER_VALUES} values")
        if any(len(v) > MAX_NAME_LEN for v in values):
            raise StreamParamError(f"{name}: a value is longer than {MAX_NAME_LEN} characters")
        out.append(frozenset(values) if values else None)
    return out[0], out[1]


def parse_last_event_id(raw: str | None) -> int | None:
    if raw is None or raw.strip() == "":
        return None
    if not raw.strip().isdigit() or len(raw.strip()) > 18:
        raise StreamParamError("last_event_id (or Last-Event-ID): not an event id (a non-negative integer)")
    return int(raw.strip())


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=orjson.dumps({"error": message, "status": status}),
                        content_type="application/json", headers=headers)


def _percentiles(values: Iterable[float]) -> dict[str, float | None]:
    ordered = sorted(values)
    if not ordered:
        return {"p50": None, "p99": None, "max": None, "rows": 0}
    pick = lambda q: round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)  # noqa: E731
    return {"p50": pick(0.5), "p99": pick(0.99), "max": round(ordered[-1], 1), "rows": len(ordered)}


def _direct_sink(transport: asyncio.BaseTransport, chunked: bool) -> Callable[[bytes], bool]:
    """Write a chunk straight to the socket when its buffer is below the limit: one call in
    the hub's dispatch instead of waking a coroutine per subscriber. Framed as aiohttp
    frames the rest of this response (HTTP/1.1 chunked transfer coding)."""
    write_transport = transport if isinstance(transport, asyncio.WriteTransport) else None

    def sink(data: bytes) -> bool:
        if write_transport is None or write_transport.is_closing():
            return False
        if write_transport.get_write_buffer_size() > DIRECT_WRITE_LIMIT:
            return False  # the client is behind: the queue and its bound take over
        write_transport.write(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
        return True

    return sink


class StreamServer:
    def __init__(self, cfg: Config, hub: Hub, feed: EventFeed, tokens: StreamTokens) -> None:
        self.cfg = cfg
        self.hub = hub
        self.feed = feed
        self.tokens = tokens
        self.started = time.time()

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/api/stream", self.stream)
        app.router.add_route("OPTIONS", "/api/stream", self.preflight)
        app.router.add_get("/api/stream/health", self.health)

    def cors_headers(self, request: web.Request) -> dict[str, str]:
        """The page of this service (same host, the service's PORT) and CORS_ORIGINS may read."""
        origin = request.headers.get("Origin")
        if not origin:
            return {}
        allowed = set(self.cfg.cors_origins)
        host = urlsplit(f"//{request.host}").hostname or ""
        for scheme in ("http", "https"):
            for h in {host, "127.0.0.1", "localhost"} if host in ("127.0.0.1", "localhost") else {host}:
                allowed.add(f"{scheme}://{h}:{self.cfg.port}")
        if "*" in allowed or origin in allowed:
            return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
        return {}

    async def preflight(self, request: web.Request) -> web.Response:
        return web.Response(status=204, headers={**self.cors_headers(request),
                                                 "Access-Control-Allow-Headers": "Last-Event-ID, Cache-Control",
                                                 "Access-Control-Allow-Methods": "GET"})

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "subscribers": self.hub.count, "cursor": self.hub.cursor,
                                  "dispatched_events": self.hub.dispatched_events, "wakeups": self.feed.wakeups,
                                  "dispatches": self.hub.dispatches, "offers": self.hub.offers,
                                  "missed_events": self.hub.missed_total(),
                                  "lag_ms": _percentiles(self.feed.lag_ms),
                                  "read_ms": _percentiles(self.feed.read_ms)},
                                 dumps=lambda o: orjson.dumps(o).decode())

    async def stream(self, request: web.Request) -> web.StreamResponse:
        cors = self.cors_headers(request)
        query: dict[str, list[str]] = {}
        for k, v in request.query.items():
            query.setdefault(k, []).append(v)
        unknown = sorted(set(query) - PARAMS)
        if unknown:
            return _error(400, f"unknown query parameter {', '.join(unknown)}; allowed: {', '.join(sorted(PARAMS))}",
                          cors)
        try:
            devices, metrics = parse_filters(query)
            last = parse_last_event_id(request.headers.get("Last-Event-ID") or
                                       (query.get("last_event_id") or [None])[-1])
        except StreamParamError as exc:
            return _error(400, str(exc), cors)
        token = (query.get("token") or [""])[-1]
        if not token:
            return _error(401, "token: missing; get one from POST /api/stream/token with a read key", cors)
        try:
            self.tokens.verify(token)
        except TokenError as exc:
            return _error(401, f"token: {exc}", cors)
        if self.hub.count >= self.cfg.stream_max_subscribers:
            return _error(503, f"too many open streams (STREAM_MAX_SUBSCRIBERS={self.cfg.stream_max_subscribers})",
                          {**cors, "Retry-After": "5"})

        resp = web.StreamResponse(headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no", **cors})
        await resp.prepare(request)
        sock = request.transport.get_extra_info("socket") if request.transport is not None else None
        if sock is not None:
            # A small kernel buffer per stream: a stalled client holds ~64 KB there, not megabytes
            # (500 of them would otherwise pin gigabytes), and its bounded queue takes over.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
        sub = self.hub.subscribe(devices, metrics)  # live events queue from here on
        try:
            await resp.write(retry_frame(2000))
            if last is not None:
                await self._catch_up(resp, sub, last)
            if request.transport is not None:
                # aiohttp chose the framing in prepare(): chunked for HTTP/1.1, none for 1.0.
                chunked = resp.headers.get("Transfer-Encoding", "").lower() == "chunked"
                sub.sink = _direct_sink(request.transport, chunked=chunked)
            await self._pump(resp, sub)
        except (ConnectionResetError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self.hub.unsubscribe(sub)
        return resp

    async def _catch_up(self, resp: web.StreamResponse, sub: Subscriber, last: int) -> None:
        """What the client missed, from the database, up to where its live queue begins."""
        upto = self.hub.cursor
        oldest = await self.feed.oldest_row()
        row, _ = split_event_id(last)
        if oldest is not None and row + 1 < oldest and row > 0:
            await resp.write(missed_frame(None, expired=True, oldest_event_id=oldest * ROW_SPAN))
        async for page in self.feed.catch_up(last, upto):
            sel = [e for e in page if (sub.devices is None or e.device_id in sub.devices)
                   and (sub.metrics is None or e.metric in sub.metrics)]
            if sel:
                await resp.write(b"".join(e.frame for e in sel))
                sub.delivered += len(sel)

    async def _pump(self, resp: web.StreamResponse, sub: Subscriber) -> None:
        # No timer per wait (asyncio.wait_for makes a task each time, which at 500 streams
        # was a good part of the CPU): one heartbeat task for all streams sets `beat` instead.
        # While the pump is inside a write, the hub must queue (order), so `sink` is unset.
        sink = sub.sink
        while True:
            await sub.wake.wait()
            chunks = sub.take()
            sub.sink = None
            if chunks:
                await resp.write(b"".join(chunks))  # waits while the client's socket is full
            elif sub.beat:
                await resp.write(HEARTBEAT)
            sub.beat = False
            sub.sink = sink

    async def heartbeats(self) -> None:
        """Every STREAM_HEARTBEAT_S, wake each stream that sent nothing since the last beat."""
        while True:
            await asyncio.sleep(self.cfg.stream_heartbeat_s)
            for sub in self.hub.subscribers():
                if sub.idle:
                    sub.beat = True
                    sub.wake.set()
                sub.idle = True
