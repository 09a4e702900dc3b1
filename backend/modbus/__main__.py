"""Command line: `python -m backend.modbus {run,probe,check,queue} ...`.

run    --config FILE [--once] [--stdout]   poll and forward until SIGTERM/SIGINT
probe  (--config FILE --device ID | --tcp H[:P] | --rtu-over-tcp H[:P] | --serial DEV)
       --address A --count N [--table holding] [--unit 1]
check  --config FILE                       validate the config, print the read plan
queue  --config FILE [--show-dead N] [--requeue-dead]
simulate [--listen H:P | --serial DEV] [--order CDAB]   fake Nivus devices for trying it out
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

from .config import Config, ConfigError, ConnectionConfig, load_config
from .forwarder import Forwarder
from .planning import plan_reads
from .poller import Poller, make_client, poll_once
from .probe import probe
from .queue import DiskQueue
from .registers import parse_address, parse_table

log = logging.getLogger("backend.modbus")


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # pymodbus logs every failed connect/timeout as ERROR with tracebacks; our own
    # messages say the same once, with backoff, so keep its output for -v only.
    if level.upper() != "DEBUG":
        logging.getLogger("pymodbus").setLevel(logging.CRITICAL)


def _open_queue(config: Config) -> DiskQueue:
    q = config.queue
    return DiskQueue(q.path, max_records=q.max_records, overflow=q.overflow, max_dead_letters=q.max_dead_letters)


def _forwarder(config: Config, queue: DiskQueue) -> Forwarder:
    api = config.api
    assert api is not None  # load_config(require_api=True) guarantees it
    return Forwarder(
        queue,
        api.endpoint,
        api.api_key,
        batch_size=api.batch_size,
        timeout=api.timeout,
        verify_tls=api.verify_tls,
        retry_min=api.retry_min,
        retry_max=api.retry_max,
        auth_retry=api.auth_retry,
    )


def _print_records(records: list[dict[str, Any]]) -> None:
    for record in records:
        print(json.dumps(record), flush=True)


def cmd_run(args: argparse.Namespace) -> int:
    config = load_config(args.config, require_api=not args.stdout)
    if args.stdout:
        if args.once:
            _print_records(poll_once(config))
            return 0
        return _serve(config, _print_records, None)
    queue = _open_queue(config)
    forwarder = _forwarder(config, queue)
    try:
        if args.once:
            forwarder.submit(poll_once(config))
            ok = forwarder.flush(timeout=args.flush_timeout)
            if not ok:
                log.warning("%d record(s) still queued; they are sent by the next run", len(queue))
            return 0 if ok else 3
        forwarder.start()
        return _serve(config, forwarder.submit, forwarder)
    finally:
        forwarder.stop()
        queue.close()


def _serve(config: Config, sink: Any, forwarder: Forwarder | None) -> int:
    stop = threading.Event()

    def _on_signal(signum: int, _frame: Any) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    poller = Poller(config, sink)
    poller.start()
    log.info(
        "polling %d device(s) on %d connection(s)%s",
        len(config.devices),
        len(poller.workers),
        f", forwarding to {config.api.endpoint}" if forwarder and config.api else "",
    )
    while not stop.wait(1.0):
        if not poller.alive():
            log.error("all poll threads ended; exiting")
            return 1
    poller.stop()
    return 0


def _adhoc_connection(args: argparse.Namespace) -> ConnectionConfig:
    def host_port(text: str) -> tuple[str, int]:
        host, _, port = text.rpartition(":") if ":" in text else (text, "", "502")
        return host, int(port)

    common = {"timeout": args.timeout, "retries": args.retries}
    if args.tcp:
        host, port = host_port(args.tcp)
        return ConnectionConfig("probe", "tcp", host=host, port=port, **common)
    if args.rtu_over_tcp:
        host, port = host_port(args.rtu_over_tcp)
        return ConnectionConfig("probe", "rtu_over_tcp", host=host, port=port, **common)
    return ConnectionConfig(
        "probe",
        "rtu",
        serial_port=args.serial,
        baudrate=args.baudrate,
        parity=args.parity,
        bytesize=args.bytesize,
        stopbits=args.stopbits,
        **common,
    )


def cmd_probe(args: argparse.Namespace) -> int:
    unit = args.unit
    if args.config:
        if not args.device:
            print("probe --config needs --device ID", file=sys.stderr)
            return 2
        config = load_config(args.config, require_api=False)
        device = next((d for d in config.devices if d.device_id == args.device), None)
        if device is None:
            print(f"no device {args.device!r} in {args.config}", file=sys.stderr)
            return 2
        conn = config.connections[device.connection]
        unit = device.unit if unit is None else unit
    elif args.tcp or args.rtu_over_tcp or args.serial:
        conn = _adhoc_connection(args)
    else:
        print("probe needs --config/--device, --tcp, --rtu-over-tcp or --serial", file=sys.stderr)
        return 2
    text = args.address.strip()
    try:
        if text.isdigit() and len(text) >= 5 and not args.table:
            # Without --table, 5-6 digits are a Modicon reference (40001 = holding 0).
            table, address = parse_address(text, args.address_base, None)
        else:
            table, address = parse_address(int(text), args.address_base, parse_table(args.table or "holding"))
    except (ValueError, TypeError) as exc:
        print(f"--address/--table: {exc}", file=sys.stderr)
        return 2
    limit = 2000 if table.is_bit else 125
    if not 1 <= args.count <= limit or address + args.count - 1 > 0xFFFF:
        print(f"--count must be 1..{limit} and stay within the address space", file=sys.stderr)
        return 2
    code, text = probe(conn, make_client(conn), table, address, args.count, unit or 1, args.address_base, args.sliding)
    print(text, file=sys.stdout if code == 0 else sys.stderr)
    return code


def cmd_check(args: argparse.Namespace) -> int:
    config = load_config(args.config, require_api=False)
    if config.api is None:
        print("api: (none: only run --stdout will work)")
    elif not config.api.api_key:
        print(f"api: {config.api.endpoint} (no API key yet: only run --stdout will work)")
    else:
        print(f"api: {config.api.endpoint}")
    print(f"queue: {config.queue.path} (max {config.queue.max_records} records, {config.queue.overflow})")
    for name, conn in config.connections.items():
        devices = config.devices_on(name)
        print(f"connection {name}: {conn.describe()}, {len(devices)} device(s)")
        for d in devices:
            blocks = plan_reads(d.registers, max_gap=d.max_gap)
            print(
                f"  device {d.device_id}: unit {d.unit}, every {d.poll_period:g}s, timeout {d.timeout:g}s,"
                f" retries {d.retries}, {len(blocks)} request(s) per poll"
            )
            for b in blocks:
                names = ", ".join(e.name for e in b.entries)
                print(f"    read {b.table.value} {b.address} count {b.count}: {names}")
    return 0


def cmd_queue(args: argparse.Namespace) -> int:
    config = load_config(args.config, require_api=False)
    queue = _open_queue(config)
    try:
        if args.requeue_dead:
            print(f"requeued {queue.requeue_dead_letters()} dead letter(s)")
        dead = queue.dead_letters()
        print(f"{config.queue.path}: {len(queue)} queued, {len(dead)} dead letter(s)")
        for item in dead[-args.show_dead :] if args.show_dead else []:
            print(f"  #{item['id']} status {item['status']}: {item['reason'][:200]}\n    {item['payload'][:300]}")
    finally:
        queue.close()
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from .registers import WordOrder
    from .simulator import run_demo

    host, _, port = args.listen.rpartition(":")
    run_demo(
        host or "127.0.0.1",
        int(port),
        units=args.units,
        order=WordOrder(args.order.upper()),
        rtu_over_tcp=args.rtu_over_tcp,
        serial_port=args.serial,
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m backend.modbus", description="FluxIO Modbus poller")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING (DEBUG includes pymodbus)")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="poll devices and forward readings")
    run.add_argument("--config", required=True)
    run.add_argument("--once", action="store_true", help="poll every device once, send, exit")
    run.add_argument("--stdout", action="store_true", help="print records as JSON lines instead of sending")
    run.add_argument("--flush-timeout", type=float, default=30.0, help="with --once: seconds to try sending")
    run.set_defaults(func=cmd_run)

    pr = sub.add_parser("probe", help="read registers once and show 32-bit pairs in every word order")
    src = pr.add_mutually_exclusive_group()
    src.add_argument("--tcp", metavar="HOST[:PORT]")
    src.add_argument("--rtu-over-tcp", metavar="HOST[:PORT]")
    src.add_argument("--serial", metavar="DEVICE")
    src.add_argument("--config")
    pr.add_argument("--device", help="with --config: use this device's connection and unit")
    pr.add_argument("--baudrate", type=int, default=9600)
    pr.add_argument("--parity", choices=["N", "E", "O"], default="N")
    pr.add_argument("--bytesize", type=int, choices=[7, 8], default=8)
    pr.add_argument("--stopbits", type=int, choices=[1, 2], default=1)
    pr.add_argument("--unit", type=int, default=None, help="unit/slave id (default 1, or the device's)")
    pr.add_argument("--table", help="holding (default), input, coil, discrete")
    pr.add_argument("--address", default="0", help="start address, or Modicon reference like 40001")
    pr.add_argument("--address-base", type=int, choices=[0, 1], default=0)
    pr.add_argument("--count", type=int, default=12)
    pr.add_argument("--sliding", action="store_true", help="decode a pair at every register, not every second")
    pr.add_argument("--timeout", type=float, default=2.0)
    pr.add_argument("--retries", type=int, default=1)
    pr.set_defaults(func=cmd_probe)

    ck = sub.add_parser("check", help="validate a config and show the read plan")
    ck.add_argument("--config", required=True)
    ck.set_defaults(func=cmd_check)

    qu = sub.add_parser("queue", help="show the store-and-forward queue")
    qu.add_argument("--config", required=True)
    qu.add_argument("--show-dead", type=int, default=0, metavar="N", help="print the last N dead letters")
    qu.add_argument("--requeue-dead", action="store_true", help="move dead letters back into the queue")
    qu.set_defaults(func=cmd_queue)

    sim = sub.add_parser("simulate", help="serve simulated Nivus transmitters (no hardware needed)")
    sim.add_argument("--listen", default="127.0.0.1:5020", metavar="HOST:PORT")
    sim.add_argument("--serial", metavar="DEVICE", help="serve RTU on this serial device instead of TCP")
    sim.add_argument("--rtu-over-tcp", action="store_true", help="RTU framing on the TCP socket")
    sim.add_argument("--units", type=int, default=1, help="unit ids 1..N")
    sim.add_argument("--order", default="ABCD", choices=["ABCD", "CDAB", "BADC", "DCBA"])
    sim.set_defaults(func=cmd_simulate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.log_level)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
