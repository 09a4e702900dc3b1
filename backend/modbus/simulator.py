"""A real pymodbus server with live, changeable device memory.

Used by the tests (TCP, RTU over TCP, RTU on a virtual serial pair) and by
`python -m backend.modbus simulate` so the poller can be tried without hardware.
Nothing here is imported by the poller itself.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Iterable
from typing import Any

from pymodbus import FramerType
from pymodbus.constants import ExcCodes
from pymodbus.exceptions import NoSuchIdException
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType as SimType
from pymodbus.simulator import SimData, SimDevice
from pymodbus.simulator.simutils import SimUtils

from . import nivus
from .registers import DataType, Table, WordOrder, encode_raw

_FC_TABLE = {1: Table.COIL, 2: Table.DISCRETE, 3: Table.HOLDING, 4: Table.INPUT}


class SimulatedDevice:
    """One unit id's memory. Writes from any thread show up at the next request.

    `silent` makes the device not answer at all (like a sensor with a broken cable);
    `exception` makes it answer every request with that Modbus exception code;
    `invalid` lists (table, address) pairs it refuses like unmapped registers.
    """

    def __init__(self, unit: int, size: int = 128) -> None:
        self.unit = unit
        self.size = (size + 15) // 16 * 16
        self.silent = False
        self.exception: int | None = None
        self.invalid: set[tuple[Table, int]] = set()
        self.requests: list[tuple[Table, int, int]] = []
        self._lock = threading.Lock()
        self._memory: dict[Table, dict[int, int | bool]] = {t: {} for t in Table}

    def set_registers(self, table: Table, address: int, words: Iterable[int]) -> None:
        with self._lock:
            for i, word in enumerate(words):
                self._memory[table][address + i] = int(word)

    def set_value(self, table: Table, address: int, value: float, dtype: DataType, order: WordOrder) -> None:
        self.set_registers(table, address, encode_raw(value, dtype, order))

    def set_bit(self, table: Table, address: int, value: bool) -> None:
        with self._lock:
            self._memory[table][address] = bool(value)

    def set_nivus(
        self,
        flow_rate: float,
        totalizer: float,
        temperature: float,
        status: int,
        order: WordOrder = WordOrder.ABCD,
        table: Table = Table.HOLDING,
    ) -> None:
        for entry in nivus.register_map(table, order):
            value = {"flow_rate": flow_rate, "totalizer": totalizer, "temperature": temperature, "status": status}[
                entry.name
            ]
            self.set_value(table, entry.address, value, entry.dtype, entry.order)

    async def _action(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: Any,
    ) -> ExcCodes | None:
        table = _FC_TABLE.get(function_code)
        if table is None:
            return None
        self.requests.append((table, address, count))
        if self.silent:
            # Raised here, the server's ignore_missing_devices path sends nothing back.
            raise NoSuchIdException(f"simulated silence of unit {self.unit}")
        if self.exception is not None:
            return ExcCodes(self.exception)
        if any((table, a) in self.invalid for a in range(address, address + count)):
            return ExcCodes.ILLEGAL_ADDRESS
        with self._lock:
            memory = dict(self._memory[table])
        if table.is_bit:
            # Bit blocks are stored packed, 16 to a register, starting at start_address*16.
            bits = SimUtils.registersToBits(registers)
            for a, v in memory.items():
                index = a - start_address * 16
                if 0 <= index < len(bits):
                    bits[index] = bool(v)
            registers[:] = SimUtils.bitsToRegisters(bits)
        else:
            for a, v in memory.items():
                index = a - start_address
                if 0 <= index < len(registers):
                    registers[index] = int(v)
        return None

    def sim_device(self) -> SimDevice:
        zeros = [0] * self.size
        falses = [False] * self.size
        return SimDevice(
            id=self.unit,
            simdata=(
                [SimData(0, values=list(falses), datatype=SimType.BITS)],
                [SimData(0, values=list(falses), datatype=SimType.BITS)],
                [SimData(0, values=list(zeros), datatype=SimType.REGISTERS)],
                [SimData(0, values=list(zeros), datatype=SimType.REGISTERS)],
            ),
            action=self._action,
        )


class SimServer:
    """A pymodbus server on its own event loop thread: TCP, RTU-over-TCP or serial RTU."""

    def __init__(
        self,
        devices: list[SimulatedDevice],
        *,
        host: str = "127.0.0.1",
        port: int = 5020,
        serial_port: str | None = None,
        baudrate: int = 19200,
        rtu_over_tcp: bool = False,
    ) -> None:
        self.devices = devices
        self.host = host
        self.port = port
        self.serial_port = serial_port
        self.baudrate = baudrate
        self.rtu_over_tcp = rtu_over_tcp
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: Any = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def start(self, timeout: float = 10.0) -> SimServer:
        self._ready.clear()
        self._error = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="modbus-sim", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("simulator did not start")
        if self._error is not None:
            raise RuntimeError(f"simulator failed to start: {self._error}") from self._error
        return self

    def _run(self) -> None:
        assert self._loop is not None
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._start_server())
        except BaseException as exc:  # noqa: BLE001 - reported to start()
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()
        self._loop.close()

    async def _start_server(self) -> None:
        sims = [d.sim_device() for d in self.devices]
        if self.serial_port:
            self._server = ModbusSerialServer(
                sims,
                framer=FramerType.RTU,
                port=self.serial_port,
                baudrate=self.baudrate,
                ignore_missing_devices=True,
            )
        else:
            self._server = ModbusTcpServer(
                sims,
                framer=FramerType.RTU if self.rtu_over_tcp else FramerType.SOCKET,
                address=(self.host, self.port),
                ignore_missing_devices=True,
            )
        await self._server.serve_forever(background=True)

    def stop(self, timeout: float = 10.0) -> None:
        if self._loop is None or self._thread is None:
            return
        if self._server is not None and self._loop.is_running():
            fut = asyncio.run_coroutine_threadsafe(self._server.shutdown(), self._loop)
            try:
                fut.result(timeout)
            except Exception:  # noqa: BLE001 - stopping is best effort
                pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)
        self._server = None
        self._loop = None
        self._thread = None

    def __enter__(self) -> SimServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_demo(
    host: str,
    port: int,
    *,
    units: int = 1,
    order: WordOrder = WordOrder.ABCD,
    rtu_over_tcp: bool = False,
    serial_port: str | None = None,
) -> None:
    """Serve Nivus-like devices whose values drift, until interrupted."""
    devices = [SimulatedDevice(unit) for unit in range(1, units + 1)]
    server = SimServer(devices, host=host, port=port, rtu_over_tcp=rtu_over_tcp, serial_port=serial_port).start()
    where = serial_port or f"{host}:{port}"
    print(f"simulating {units} Nivus transmitter(s) at {where}, word order {order.value}; Ctrl-C stops")
    total = 0.0
    start = time.monotonic()
    try:
        while True:
            t = time.monotonic() - start
            for d in devices:
                flow = 12.5 + 2.0 * math.sin(t / 30 + d.unit)
                total += flow / 3600
                d.set_nivus(flow, total, 14.0 + 0.5 * math.sin(t / 300), 0, order)
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
