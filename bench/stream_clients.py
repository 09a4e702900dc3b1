"""`python -m bench.stream_clients`: N SSE subscribers in one asyncio process, for bench/stream.py.

Subscriber i watches device `<prefix><i>` and the probe device. It counts reading and
`missed` events, and notes when each probe event arrived (time.time(), the same clock as
PostgreSQL's on this machine) with its event id. Prints "ready" once every stream answered;
on a line "stop" on stdin it prints one JSON line of results and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time

import aiohttp
import orjson

PROBE_ID = re.compile(rb'id: (\d+)\nevent: reading\ndata: \{"device_id":"probe","metric":"p","ts":"[^"]*","value":([0-9.]+)')


class Counts:
    def __init__(self) -> None:
        self.readings = 0
        self.missed = 0
        self.probes: list[tuple[int, int, float]] = []  # (event id, probe number, arrival)
        self.connected = 0
        self.errors: list[str] = []


async def subscriber(session: aiohttp.ClientSession, url: str, params: list[tuple[str, str]], counts: Counts,
                     ready: asyncio.Event, total: int) -> None:
    try:
        async with session.get(url, params=params, timeout=aiohttp.ClientTimeout(total=None)) as resp:
            if resp.status != 200:
                counts.errors.append(f"{resp.status}: {(await resp.text())[:200]}")
                return
            counts.connected += 1
            if counts.connected + len(counts.errors) >= total:
                ready.set()
            tail = b""
            async for chunk in resp.content.iter_any():
                now = time.time()
                data = tail + chunk
                cut = data.rfind(b"\n\n")
                if cut < 0:
                    tail = data
                    continue
                whole, tail = data[:cut + 2], data[cut + 2:]
                counts.readings += whole.count(b"event: reading\n")
                if b"event: missed" in whole:
                    for m in re.finditer(rb'event: missed\ndata: \{"missed":(\d+)', whole):
                        counts.missed += int(m.group(1))
                if b'"probe"' in whole:
                    counts.probes.extend((int(m.group(1)), int(float(m.group(2))), now)
                                         for m in PROBE_ID.finditer(whole))
    except (aiohttp.ClientError, OSError) as exc:
        counts.errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        if counts.connected + len(counts.errors) >= total:
            ready.set()


async def main_async(args: argparse.Namespace) -> None:
    counts = Counts()
    ready = asyncio.Event()
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        tasks = [asyncio.create_task(subscriber(
            session, args.url, [("token", args.token), ("device_id", f"{args.prefix}{i}"), ("device_id", "probe")],
            counts, ready, args.n)) for i in range(args.first, args.first + args.n)]
        await asyncio.wait_for(ready.wait(), 120)
        print(orjson.dumps({"ready": counts.connected, "errors": counts.errors[:3]}).decode(), flush=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.readline)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
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
