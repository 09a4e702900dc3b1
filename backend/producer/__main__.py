"""`python -m backend.producer`: seed 002's signals for N simulated devices, once a second.

The API key is read from the environment (PRODUCER_API_KEY, else ADMIN_API_KEY), never from
the command line, where `ps` would show it.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from datetime import UTC, datetime, timedelta

from backend.producer.sender import Refused, Sender
from backend.producer.signals import fleet

log = logging.getLogger("backend.producer")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m backend.producer", description=__doc__.splitlines()[0])
    p.add_argument("--url", default=os.environ.get("PRODUCER_URL", "http://127.0.0.1:5000"),
                   help="the service's base URL (default %(default)s)")
    p.add_argument("--devices", type=int, default=3, help="simulated devices (default %(default)s)")
    p.add_argument("--prefix", default="sim-", help="device ids are PREFIX1..PREFIXN (default %(default)s)")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between samples (default %(default)s)")
    p.add_argument("--batch", type=int, default=1,
                   help="samples per POST: 1 = seed 002's one message per POST; N>1 = arrays of N messages")
    p.add_argument("--count", type=int, default=0, help="stop after this many samples per device (0: run on)")
    p.add_argument("--seed", type=int, default=None, help="random seed, for a reproducible run")
    p.add_argument("--damped-restart", type=float, default=600.0,
                   help="restart the damped oscillation every this many seconds (0: never)")
    p.add_argument("--max-attempts", type=int, default=8, help="tries per POST before giving it up")
    args = p.parse_args(argv)
    for name in ("devices", "batch", "max_attempts"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.interval <= 0 or args.count < 0:
        p.error("--interval must be positive and --count not negative")
    return args


def run(args: argparse.Namespace, sender: Sender) -> int:
    """Sample every device each interval; POST per message or in batches. Returns messages sent."""
    devices = fleet(args.devices, args.prefix, args.seed)
    start_wall = datetime.now(UTC)
    start = time.monotonic()
    pending: list[dict] = []
    sent = tick = 0
    stop = False

    def _stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    while not stop and (args.count == 0 or tick < args.count):
        t = tick * args.interval
        stamp = (start_wall + timedelta(seconds=t)).isoformat().replace("+00:00", "Z")
        for d in devices:
            msg = {"timestamp": stamp, "signals": d.sample(t, args.damped_restart)}
            if args.batch == 1:
                sent += _deliver(sender, msg, d.device_id)
            else:
                pending.append({"device_id": d.device_id, **msg})
        tick += 1
        if pending and (len(pending) >= args.batch * len(devices) or tick == args.count):
            sent += _deliver(sender, pending)
            pending = []
        delay = start + tick * args.interval - time.monotonic()
        if delay > 0 and not stop:
            time.sleep(delay)
    if pending:
        sent += _deliver(sender, pending)
    return sent


def _deliver(sender: Sender, body: dict | list, device_id: str | None = None) -> int:
    n = len(body) if isinstance(body, list) else 1
    try:
        sender.send(body, device_id)
        return n
    except Refused as exc:
        log.error("the service refused %d message(s): %s", n, exc)
    except Exception as exc:  # noqa: BLE001 - retries exhausted: say so, go on with the next sample
        log.error("gave up on %d message(s) after retries: %s", n, exc)
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    key = os.environ.get("PRODUCER_API_KEY") or os.environ.get("ADMIN_API_KEY")
    sender = Sender(args.url, key, max_attempts=args.max_attempts)
    log.info("sending %d device(s) x 5 signals every %gs to %s (batch %d)", args.devices, args.interval,
             args.url, args.batch)
    try:
        sent = run(args, sender)
    except KeyboardInterrupt:
        sent = -1
    finally:
        sender.close()
    if sent >= 0:
        log.info("sent %d message(s)", sent)
    return 0


if __name__ == "__main__":
    sys.exit(main())
