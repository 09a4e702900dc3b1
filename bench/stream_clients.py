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

from backend.ops import heap

PROBE_ID = re.compile(rb'id: (\d+)\nevent: reading\ndata: \{"device_id":"probe","metric":"p","ts":"[^"]*","value":([0-9.]+)')
MISSED = re.compile(rb'event: missed\ndata: \{"missed":(\d+)')


class Counts:
    def __init__(self, total: int) -> None:
        self.total = total
        self.readings = 0
        self.missed = 0
        self.raw_probes: list[tuple[bytes, bytes, float]] = []  # (event id, probe number, arrival)
        self.connected = 0
        self.recvs = 0  # data_received calls: what the clients' CPU follows
        self.bytes = 0
        self.errors: list[str] = []
        self.ready = asyncio.Event()
        self.stopping = False  # set before this process closes its streams

    def answered(self) -> None:
        if self.connected + len(self.errors) >= self.total:
            self.ready.set()


# One receive buffer for every stream: each read is handled before the next one starts, and
# reading into it (asyncio.BufferedProtocol, recv_into) allocates nothing per read, where
# Protocol.data_received gets a fresh bytes object from a 256 KB allocation every time.
BUFFER = bytearray(256 * 1024)
PROBE_DATA = b'data: {"device_id":"probe"'


class Subscriber(asyncio.BufferedProtocol):
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

    def get_buffer(self, sizehint: int) -> memoryview:
        return memoryview(BUFFER)

    def buffer_updated(self, nbytes: int) -> None:
        now = time.time()
        counts = self.counts
        counts.recvs += 1
        counts.bytes += nbytes
        if not self.streaming:
            self.head += BUFFER[:nbytes]
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            status = self.head.split(b"\r\n", 1)[0]
            if b" 200 " not in status + b" ":
                counts.errors.append(self.head[:300].decode(errors="replace"))
                counts.answered()
                if self.transport is not None:
                    self.transport.close()
                return
            self.streaming = True
            counts.connected += 1
            counts.answered()
            data, n, self.head = bytearray(self.head[end + 4:]), len(self.head) - end - 4, b""
        elif self.tail:
            data, n = bytearray(self.tail) + BUFFER[:nbytes], len(self.tail) + nbytes
        else:
            data, n = BUFFER, nbytes  # the usual case: whole events, looked at in place
        cut = data.rfind(b"\n\n", 0, n)
        if cut < 0:
            self.tail = bytes(data[:n])
            return
        # What follows the last whole event waits for the next read; mostly it is only the
        # chunk's closing CRLF (the server writes whole events per chunk), which is dropped.
        rest = bytes(data[cut + 2:n])
        self.tail = b"" if rest == b"\r\n" else rest
        # Only the whole events (up to `cut`) are looked at; what follows waits in `tail`.
        counts.readings += data.count(b"event: reading\n", 0, cut)
        if data.find(b"event: missed", 0, cut) >= 0:
            counts.missed += sum(int(m.group(1)) for m in MISSED.finditer(data, 0, cut))
        j = data.find(PROBE_DATA, 0, cut)
        while j >= 0:
            m = PROBE_ID.match(data, data.rfind(b"id: ", 0, j))
            if m:
                counts.raw_probes.append((m.group(1), m.group(2), now))  # converted after the run
            j = data.find(PROBE_DATA, j + 1, cut)

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
    # The measuring process must not pause either: a full collection here would be counted as
    # the service's latency (the stream process settles its heap the same way).
    heap.settle()
    print(orjson.dumps({"ready": counts.connected, "errors": counts.errors[:3]}).decode(), flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)
    counts.stopping = True
    for t in transports:
        t.close()
    probes = [(int(eid), int(float(k)), at) for eid, k, at in counts.raw_probes]
    print(orjson.dumps({"readings": counts.readings, "missed": counts.missed, "probes": probes,
                        "connected": counts.connected, "errors": counts.errors[:3], "recvs": counts.recvs,
                        "bytes": counts.bytes}).decode(), flush=True)


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
