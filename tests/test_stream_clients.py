"""bench/stream_clients.py's parsing of the SSE bytes as TCP cuts them (chunked coding, any split)."""

from __future__ import annotations

import asyncio

from bench import stream_clients as sc

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def reading(eid: int, device: str, value: float) -> bytes:
    return (b'id: %d\nevent: reading\ndata: {"device_id":"%s","metric":"p","ts":"2026-01-01T00:00:00Z",'
            b'"value":%r,"text":null}\n\n' % (eid, device.encode(), value))


def feed(pieces: list[bytes]) -> sc.Counts:
    async def run() -> sc.Counts:
        counts = sc.Counts(1)
        proto = sc.Subscriber(b"", counts)
        for p in pieces:
            sc.BUFFER[:len(p)] = p
            proto.buffer_updated(len(p))
        return counts

    return asyncio.run(run())


WIRE = (HEAD + chunk(b"retry: 2000\n: connected\n\n") + chunk(reading(5_000_000, "sd1", 1.5) +
        reading(6_000_000, "probe", 7.0)) + chunk(b'event: missed\ndata: {"missed":12}\n\n') +
        chunk(b": heartbeat\n\n") + chunk(reading(7_000_003, "probe", 8.0)))


def test_counts_and_probes_whatever_the_reads_cut() -> None:
    for size in (1, 2, 3, 7, 64, len(WIRE)):
        counts = feed([WIRE[i:i + size] for i in range(0, len(WIRE), size)])
        assert counts.connected == 1 and not counts.errors, size
        assert counts.readings == 3 and counts.missed == 12, size
        assert [(e, k) for e, k, _ in counts.raw_probes] == [(b"6000000", b"7.0"), (b"7000003", b"8.0")], size


def test_a_refused_stream_is_an_error() -> None:
    counts = feed([b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 2\r\n\r\n{}"])
    assert counts.connected == 0 and counts.errors and "401" in counts.errors[0]
