"""Microbenchmarks behind the analysis in docs/benchmarks.md, each comparing variants in one run.

    .venv/bin/python -m bench.micro parse     # raw parser, µs per reading, by GC threshold
    .venv/bin/python -m bench.micro flush     # PostgreSQL CPU per reading, by flush size

`parse` runs the real raw-string parser on a 250-line body (1,000 readings), keeping the
last results alive as the buffer does until a flush. `flush` writes batches of
single-message-sized submissions through the real PostgresSink into a scratch database
and reads the backend's CPU time (/proc via psutil) around them, so the figure is the
database's cost per reading, whatever the client does.
"""

from __future__ import annotations

import argparse
import gc
import time
import uuid
from datetime import UTC, datetime, timedelta

import psutil

from backend.ingest.parsing import ParseContext, Reading, get_parser
from backend.ingest.sinks import Submission
from backend.ingest.sinks.postgres import PostgresSink
from backend.store.pool import make_pool

from .run import resolve_admin_url, scratch_database


def parse(rounds: int) -> None:
    parser = get_parser("raw")
    base = time.time() - 3600
    body = "\n".join(f"roll:{i % 360 - 179.75:.2f},pitch:{i % 90 - 44.5:.2f},alt:{100 + i % 500 / 10:.1f},"
                     f"bat_v:{11.1 + i % 13 / 10:.2f},ts:{base + i:.3f}" for i in range(250))
    alive: list = []

    def per_reading() -> float:
        t0 = time.perf_counter()
        for _ in range(rounds):
            alive.append(parser.parse(body, ParseContext(received_at=datetime.now(UTC), default_device_id="d1")))
            del alive[:-20]  # about what a worker holds until its flushes commit
        return (time.perf_counter() - t0) / rounds / 1000 * 1e6

    default = gc.get_threshold()
    for label, threshold in (("default", default), ("10,000", (10_000, 10, 10)), ("20,000 (gunicorn.conf.py)",
                             (20_000, 10, 10)), ("100,000", (100_000, 50, 100))):
        gc.set_threshold(*threshold)
        per_reading()  # warm-up
        print(f"parse, young-generation threshold {label:26}: {min(per_reading() for _ in range(3)):.2f} us/reading")
    gc.disable()
    print(f"parse, GC disabled {'':27}: {min(per_reading() for _ in range(3)):.2f} us/reading")
    gc.enable()
    gc.set_threshold(*default)


def flush(flushes: int, admin_url: str | None) -> None:
    admin, handle = resolve_admin_url(admin_url)
    with scratch_database(admin, f"micro_{time.strftime('%Y%m%d_%H%M%S')}") as url:
        pool = make_pool(url, 1, 1)
        sink = PostgresSink(pool)
        with pool.connection() as conn:
            backend = psutil.Process(conn.info.backend_pid)
        t0 = datetime.now(UTC) - timedelta(hours=1)
        seq = iter(range(10**9))

        def batch(requests: int, messages: int) -> list[Submission]:
            # Each request: one device, `messages` timestamps of the four drone metrics.
            subs = []
            for _ in range(requests):
                n = next(seq)
                dev = f"d{n % 32}"
                rs = [Reading(dev, m, t0 + timedelta(milliseconds=n * 1000 + i), float(i))
                      for i in range(messages) for m in ("roll", "pitch", "alt", "bat_v")]
                subs.append(Submission(request_id=uuid.uuid4(), readings=rs, received_at=datetime.now(UTC),
                                       raw_payload="roll:1,pitch:2,alt:3,bat_v:4", device_id=dev, typed=True))
            return subs

        for requests, messages in ((1, 1), (6, 1), (20, 1), (1, 250), (5, 250)):
            readings = 4 * messages
            for _ in range(20):
                sink.write(batch(requests, messages))
            cpu0 = sum(backend.cpu_times()[:2])
            method = ""
            for _ in range(flushes):
                method = sink.write(batch(requests, messages)).method
            cpu = sum(backend.cpu_times()[:2]) - cpu0
            total = flushes * requests * readings
            print(f"flush of {requests:2} request(s) x {readings:4} readings ({method:6}): PostgreSQL"
                  f" {cpu / flushes * 1000:6.2f} ms per flush, {cpu / total * 1e6:5.1f} us per reading")
        pool.close()
    del handle


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.micro", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=("parse", "flush"))
    ap.add_argument("--rounds", type=int, default=300, help="parse: bodies per measurement")
    ap.add_argument("--flushes", type=int, default=200, help="flush: flushes per size")
    ap.add_argument("--admin-url", help="PostgreSQL server for the scratch database")
    args = ap.parse_args(argv)
    if args.what == "parse":
        parse(args.rounds)
    else:
        flush(args.flushes, args.admin_url)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
