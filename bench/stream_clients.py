"""`python -m bench.stream_clients`: N SSE subscribers in one asyncio process, for bench/stream.py.

Subscriber i watches device `<prefix><i>` and the probe device. It counts reading and
`missed` events, and notes when each probe event arrived (time.time(), the same clock as
PostgreSQL's on this machine) with its event id. Prints "ready" once every stream answered;
on a line "stop" on stdin it prints one JSON line of results and exits.

The clients run on the machine they measure, so they must cost as little as a client can:
each stream is a bare asyncio Protocol on its socket (no HTTP client library, no coroutine
woken per read). A read costs one recv() and a few bytes operations, so what the bench
charges to "subscriber clients" is close to the kernel's own cost of delivering the bytes.
The response is HTTP/1.1 chunked, as a browser gets it: the chunk-size lines between events
are left in place, since every event lies whole inside one chunk (the server writes whole
events) and the parsing below only looks inside events.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time
from urllib.parse import urlencode, urlsplit

import orjson

PROBE_ID = re.compile(rb'id: (\d+)\nevent: reading\ndata: \{"device_id":"probe","metric":"p","ts":"[^"]*","value":([0-9.]+)')
MISSED = re.compile(rb'event: missed\ndata: \{"missed":(\d+)')


class Counts:
    def __init__(self, total: int) -> None:
        self.total = total
        self.readings = 0
        self.missed = 0
        self.probes: list[tuple[int, int, float]] = []  # (event id, probe number, arrival)
        self.connected = 0
        self.errors: list[str] = []
        self.ready = asyncio.Event()
        self.stopping = False  # set before this process closes its streams

    def answered(self) -> None:
        if self.connected + len(self.errors) >= self.total:
            self.ready.set()


class Subscriber(asyncio.Protocol):
    def __init__(self, request: bytes, counts: Counts) -> None:
        self.request = request
        self.counts = counts
        self.head = b""  # the response head until it is complete
        self.tail = b""  # the bytes after the last whole event
        self.streaming = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        now = time.time()
        if not self.streaming:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            status = self.head.split(b"\r\n", 1)[0]
            if b" 200 " not in status + b" ":
                self.counts.errors.append(self.head[:300].decode(errors="replace"))
                self.counts.answered()
                if self.transport is not None:
                    self.transport.close()
                return
            self.streaming = True
            self.counts.connected += 1
            self.counts.answered()
            data, self.head = self.head[end + 4:], b""
        data = self.tail + data if self.tail else data
        cut = data.rfind(b"\n\n")
        if cut < 0:
            self.tail = data
            return
        whole, self.tail = data[:cut + 2], data[cut + 2:]
        counts = self.counts
        counts.readings += whole.count(b"event: reading\n")
        if b"event: missed" in whole:
            counts.missed += sum(int(m.group(1)) for m in MISSED.finditer(whole))
        if b'"probe"' in whole:
            counts.probes.extend((int(m.group(1)), int(float(m.group(2))), now) for m in PROBE_ID.finditer(whole))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.streaming:
            self.counts.errors.append(f"connection lost before the response: {exc}")
            self.counts.answered()
        elif not self.counts.stopping:
            self.counts.errors.append(f"stream ended during the run: {exc or 'closed by the server'}")


async def main_async(args: argparse.Namespace) -> None:
    counts = Counts(args.n)
    url = urlsplit(args.url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    loop = asyncio.get_running_loop()
    transports = []
    for i in range(args.first, args.first + args.n):
        query = urlencode([("token", args.token), ("device_id", f"{args.prefix}{i}"), ("device_id", "probe")])
        request = (f"GET {url.path}?{query} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                   "Accept: text/event-stream\r\n\r\n").encode()
        try:
            transport, _ = await loop.create_connection(lambda r=request: Subscriber(r, counts), host, port)
            transports.append(transport)
        except OSError as exc:
            counts.errors.append(f"{type(exc).__name__}: {exc}")
            counts.answered()
    await asyncio.wait_for(counts.ready.wait(), 120)
    print(orjson.dumps({"ready": counts.connected, "errors": counts.errors[:3]}).decode(), flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)
    counts.stopping = True
    for t in transports:
        t.close()
    print(orjson.dumps({"readings": counts.readings, "missed": counts.missed, "probes": counts.probes,
                        "connected": counts.connected, "errors": counts.errors[:3]}).decode(), flush=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--token", required=True)
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--first", type=int, default=0, help="subscriber i watches device <prefix><i>")
    ap.add_argument("--prefix", default="sd")
    asyncio.run(main_async(ap.parse_args()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
