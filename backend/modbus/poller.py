"""Modbus I/O: one thread per connection, polling the devices on it.

Why threads per *connection* and not per device: devices behind one RS485 port (or one
RTU-over-TCP gateway) share a half-duplex bus, so their requests must be serialised
anyway; separate connections (another serial port, another TCP device) get their own
thread so a dead link never delays a healthy one.

Each poll becomes one record `{"device_id", "ts", <metric>: value, ..., "modbus_ok",
["modbus_error"]}` handed to a sink (the forwarder's disk queue). Failures are data too:
a silent sensor produces `modbus_ok = 0` with the reason, which lets the server tell
"gateway up, sensor silent" (health records keep arriving) from "gateway down"
(nothing arrives).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pymodbus import FramerType
from pymodbus.client import ModbusSerialClient, ModbusTcpClient
from pymodbus.client.base import ModbusBaseSyncClient
from pymodbus.constants import ExcCodes
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

from .backoff import Backoff
from .config import Config, ConnectionConfig, DeviceConfig
from .planning import plan_reads
from .registers import ReadBlock, Table, Value, decode_block

log = logging.getLogger(__name__)

Record = dict[str, Any]
Sink = Callable[[list[Record]], None]
ClientFactory = Callable[[ConnectionConfig], ModbusBaseSyncClient]

MAX_ERROR_TEXT = 900  # the API caps text values at 1024 characters
SILENT_POLLS_BEFORE_RECONNECT = 3


def make_client(conn: ConnectionConfig) -> ModbusBaseSyncClient:
    """A pymodbus sync client for a connection; retries are done by us, per device."""
    if conn.transport == "rtu":
        return ModbusSerialClient(
            conn.serial_port,
            framer=FramerType.RTU,
            baudrate=conn.baudrate,
            parity=conn.parity,
            bytesize=conn.bytesize,
            stopbits=conn.stopbits,
            timeout=conn.timeout,
            retries=0,
            name=conn.name,
        )
    framer = FramerType.RTU if conn.transport == "rtu_over_tcp" else FramerType.SOCKET
    return ModbusTcpClient(conn.host, port=conn.port, framer=framer, timeout=conn.timeout, retries=0, name=conn.name)


def iso_ts(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat(timespec="milliseconds")


class LinkDown(Exception):
    """The connection itself failed (socket closed, serial port gone)."""


class NoResponse(Exception):
    """The device did not answer: timeout, CRC error or a garbled frame."""


class ExceptionReply(Exception):
    """The device answered with a Modbus exception response."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _exception_name(code: int) -> str:
    try:
        return ExcCodes(code).name.lower()
    except ValueError:
        return "unknown"


@dataclass
class PollResult:
    device_id: str
    ts: datetime
    readings: dict[str, Value] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    answered: bool = False  # the device replied to at least one request
    link_down: bool = False

    def to_record(self) -> Record:
        record: Record = {"device_id": self.device_id, "ts": iso_ts(self.ts)}
        record.update(self.readings)
        record["modbus_ok"] = 0 if self.errors else 1
        if self.errors:
            text = "; ".join(self.errors)
            record["modbus_error"] = text if len(text) <= MAX_ERROR_TEXT else text[: MAX_ERROR_TEXT - 3] + "..."
        return record


class DevicePoller:
    """Reads one device's register map through a (shared) client. No threads, no clock."""

    def __init__(self, device: DeviceConfig) -> None:
        self.device = device
        self.plan: list[ReadBlock] = plan_reads(device.registers, max_gap=device.max_gap)
        self.gapless = device.max_gap == 0

    def poll(self, client: ModbusBaseSyncClient, ts: datetime) -> PollResult:
        result = PollResult(self.device.device_id, ts)
        # Per-device timeout on a shared client: pymodbus reads this at every request.
        client.comm_params.timeout_connect = self.device.timeout
        for block in self.plan:
            try:
                data = self._read(client, block)
            except LinkDown as exc:
                result.errors.append(f"link down: {exc}")
                result.link_down = True
                return result
            except ExceptionReply as exc:
                result.answered = True
                if exc.code == ExcCodes.ILLEGAL_ADDRESS and block.has_gaps and not self.gapless:
                    # The device refuses reads across unmapped registers: stop
                    # coalescing over holes for it and redo this poll once.
                    log.warning(
                        "%s: %s refused (illegal address) while spanning unused registers;"
                        " reading without gaps from now on",
                        self.device.device_id,
                        block.describe(),
                    )
                    self.plan = plan_reads(self.device.registers, max_gap=0)
                    self.gapless = True
                    return self.poll(client, ts)
                result.errors.append(str(exc))
                continue
            except NoResponse as exc:
                result.errors.append(str(exc))
                continue
            result.answered = True
            readings, errors = decode_block(block, data)
            result.readings.update(readings)
            result.errors.extend(errors)
        return result

    def _read(self, client: ModbusBaseSyncClient, block: ReadBlock) -> Sequence[int] | Sequence[bool]:
        call = {
            Table.HOLDING: client.read_holding_registers,
            Table.INPUT: client.read_input_registers,
            Table.COIL: client.read_coils,
            Table.DISCRETE: client.read_discrete_inputs,
        }[block.table]
        last = ""
        attempts = self.device.retries + 1
        for _attempt in range(attempts):
            try:
                response = call(block.address, count=block.count, device_id=self.device.unit)
            except ConnectionException as exc:
                raise LinkDown(_short(exc)) from None
            except ModbusIOException as exc:
                # pymodbus reports timeouts, frames dropped for a bad CRC and replies from
                # the wrong unit this way; only the last one has a message worth keeping.
                detail = _short(exc)
                reason = detail if "request uses" in detail else "timeout or CRC error"
                last = f"{block.describe()}: no response after {attempts} attempt(s) ({reason})"
                continue
            except ModbusException as exc:
                last = f"{block.describe()}: {_short(exc)}"
                continue
            except OSError as exc:
                raise LinkDown(str(exc)) from None
            if response.isError():
                code = int(getattr(response, "exception_code", 0))
                last = f"{block.describe()}: exception {code} ({_exception_name(code)})"
                if code in (ExcCodes.DEVICE_BUSY, ExcCodes.ACKNOWLEDGE):
                    continue  # transient by definition; everything else will not change on retry
                raise ExceptionReply(last, code)
            values = response.bits if block.table.is_bit else response.registers
            # Coil responses are padded to whole bytes; keep what was asked for.
            return list(values[: block.count])
        raise NoResponse(last)


def _short(exc: Exception) -> str:
    return " ".join(str(exc).split())[:300]


def _backoff(low: float, high: float, failures: int) -> float:
    return Backoff(low, high).delay(failures)


class ConnectionWorker:
    """A thread that owns one client and polls the devices configured on it."""

    def __init__(
        self,
        conn: ConnectionConfig,
        devices: Sequence[DeviceConfig],
        sink: Sink,
        *,
        client_factory: ClientFactory = make_client,
    ) -> None:
        self.conn = conn
        self.pollers = [DevicePoller(d) for d in devices]
        self.sink = sink
        self.client_factory = client_factory
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"modbus-{conn.name}", daemon=True)
        self.client: ModbusBaseSyncClient | None = None
        self.polls = 0

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()

    def join(self, timeout: float | None = None) -> None:
        self.thread.join(timeout)

    # -- internals --------------------------------------------------------------------

    def _emit(self, records: list[Record]) -> None:
        try:
            self.sink(records)
        except Exception:  # noqa: BLE001 - a sink failure must not kill polling
            log.exception("%s: could not hand %d record(s) to the forwarder", self.conn.name, len(records))

    def _close_client(self) -> None:
        if self.client is not None:
            try:
                self.client.close()
            except Exception:  # noqa: BLE001 - closing a broken socket may itself fail
                log.debug("%s: error while closing", self.conn.name, exc_info=True)

    def _connect(self) -> str:
        """Connect if needed; returns an error text, or "" when connected."""
        if self.client is None:
            self.client = self.client_factory(self.conn)
        if self.client.connected:
            return ""
        try:
            ok = self.client.connect()
        except Exception as exc:  # noqa: BLE001 - pyserial raises assorted types
            return f"cannot connect to {self.conn.describe()}: {_short(exc)}"
        return "" if ok else f"cannot connect to {self.conn.describe()}"

    def _run(self) -> None:
        now = time.monotonic()
        due = {id(p): now for p in self.pollers}
        device_failures = {id(p): 0 for p in self.pollers}
        link_failures = 0
        silent_polls = 0
        log.info("%s: polling %d device(s) over %s", self.conn.name, len(self.pollers), self.conn.describe())
        try:
            while not self.stop_event.is_set():
                poller = min(self.pollers, key=lambda p: due[id(p)])
                wait = due[id(poller)] - time.monotonic()
                if wait > 0:
                    self.stop_event.wait(wait)
                    continue
                error = self._connect()
                if error:
                    link_failures += 1
                    delay = _backoff(self.conn.reconnect_min, self.conn.reconnect_max, link_failures)
                    if link_failures == 1 or link_failures % 10 == 0:
                        log.warning("%s (retrying in %.1fs, attempt %d)", error, delay, link_failures)
                    now = time.monotonic()
                    ts = datetime.now(UTC)
                    # Every device that was due learns why it was not read.
                    records = []
                    for p in self.pollers:
                        if due[id(p)] <= now:
                            records.append(PollResult(p.device.device_id, ts, errors=[error]).to_record())
                            due[id(p)] = now + delay
                    self._emit(records)
                    continue
                if link_failures:
                    log.info("%s: connected after %d failed attempt(s)", self.conn.name, link_failures)
                    link_failures = 0
                start = time.monotonic()
                ts = datetime.now(UTC)
                try:
                    result = poller.poll(self.client, ts)  # type: ignore[arg-type]
                except Exception as exc:  # noqa: BLE001 - one odd reply must not end this thread
                    log.exception("%s: unexpected error while polling", poller.device.device_id)
                    result = PollResult(poller.device.device_id, ts, errors=[f"internal error: {_short(exc)}"])
                    result.link_down = True  # start from a fresh connection
                self.polls += 1
                self._emit([result.to_record()])
                key = id(poller)
                if result.link_down:
                    log.warning("%s: %s", self.conn.name, "; ".join(result.errors))
                    self._close_client()
                    link_failures += 1
                    due[key] = time.monotonic() + _backoff(
                        self.conn.reconnect_min, self.conn.reconnect_max, link_failures
                    )
                    continue
                if result.answered:
                    if device_failures[key]:
                        log.info("%s: answering again", poller.device.device_id)
                    device_failures[key] = 0
                    silent_polls = 0
                    period = poller.device.poll_period
                    nxt = due[key] + period
                    now = time.monotonic()
                    if nxt <= now:  # overran: skip missed slots rather than burst
                        nxt += ((now - nxt) // period + 1) * period
                    due[key] = nxt
                else:
                    device_failures[key] += 1
                    silent_polls += 1
                    # A silent device costs timeout x retries of bus time per poll, which
                    # on a shared RS485 line delays its neighbours: poll it less often.
                    delay = _backoff(
                        poller.device.poll_period,
                        max(poller.device.backoff_max, poller.device.poll_period),
                        device_failures[key],
                    )
                    if device_failures[key] == 1:
                        log.warning("%s: no answer (%s)", poller.device.device_id, "; ".join(result.errors))
                    due[key] = start + delay
                    if self.conn.transport != "rtu" and silent_polls >= SILENT_POLLS_BEFORE_RECONNECT:
                        # A half-open TCP socket looks exactly like silent devices; a
                        # fresh connection is cheap and clears late replies too.
                        log.info("%s: %d polls without answer, reconnecting", self.conn.name, silent_polls)
                        self._close_client()
                        silent_polls = 0
        finally:
            self._close_client()
            log.info("%s: stopped", self.conn.name)


class Poller:
    """All connection workers of a config."""

    def __init__(self, config: Config, sink: Sink, *, client_factory: ClientFactory = make_client) -> None:
        self.workers = [
            ConnectionWorker(conn, config.devices_on(name), sink, client_factory=client_factory)
            for name, conn in config.connections.items()
            if config.devices_on(name)
        ]

    def start(self) -> None:
        for worker in self.workers:
            worker.start()

    def stop(self, timeout: float = 10.0) -> None:
        for worker in self.workers:
            worker.stop()
        deadline = time.monotonic() + timeout
        for worker in self.workers:
            worker.join(max(0.0, deadline - time.monotonic()))

    def alive(self) -> bool:
        return any(w.thread.is_alive() for w in self.workers)


def poll_once(config: Config, *, client_factory: ClientFactory = make_client) -> list[Record]:
    """Read every device once, sequentially (the `run --once` path and quick checks)."""
    records: list[Record] = []
    for name, conn in config.connections.items():
        devices = config.devices_on(name)
        if not devices:
            continue
        client = client_factory(conn)
        try:
            connected = False
            try:
                connected = bool(client.connect())
            except Exception as exc:  # noqa: BLE001
                log.warning("%s: %s", name, exc)
            for device in devices:
                ts = datetime.now(UTC)
                if not connected:
                    records.append(
                        PollResult(device.device_id, ts, errors=[f"cannot connect to {conn.describe()}"]).to_record()
                    )
                    continue
                records.append(DevicePoller(device).poll(client, ts).to_record())
        finally:
            client.close()
    return records
