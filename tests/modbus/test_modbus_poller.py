"""The poller against real pymodbus servers: Modbus TCP, RTU over TCP, and RTU on a
virtual serial pair (socat). No mocks: every read goes through a socket or a pty."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from backend.modbus.config import ConfigError, load_config, parse_config
from backend.modbus.poller import Poller, poll_once
from backend.modbus.registers import DataType, Table, WordOrder, shortest_float32
from backend.modbus.simulator import SimServer, SimulatedDevice
from tests.live_server import free_port, wait_for

pytestmark = pytest.mark.timeout(60)

ORDERS = list(WordOrder)
# One Nivus per word order, with values that are not symmetric in any byte order.
NIVUS_VALUES = {
    WordOrder.ABCD: (12.5, 123456.75, 14.25, 0x0001),
    WordOrder.CDAB: (0.1, 98765.4, -3.5, 0x8000),
    WordOrder.BADC: (1234.5678, 0.0, 21.0, 0x0085),
    WordOrder.DCBA: (-7.25, 1e6, 99.5, 0xFFFF),
}


class SocatPair:
    """Two linked ptys, like a USB-RS485 adapter wired to a transmitter."""

    def __init__(self, directory: Path) -> None:
        self.a = str(directory / "ttyA")  # the device side (simulator)
        self.b = str(directory / "ttyB")  # the gateway side (poller)
        self.proc: subprocess.Popen | None = None

    def start(self) -> SocatPair:
        self.proc = subprocess.Popen(
            ["socat", f"pty,raw,echo=0,link={self.a}", f"pty,raw,echo=0,link={self.b}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: os.path.exists(self.a) and os.path.exists(self.b), 10)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


@pytest.fixture
def socat_pair(tmp_path: Path) -> Iterator[SocatPair]:
    if shutil.which("socat") is None:
        pytest.skip("socat is not installed")
    pair = SocatPair(tmp_path).start()
    yield pair
    pair.stop()


def nivus_devices() -> list[SimulatedDevice]:
    devices = []
    for unit, order in enumerate(ORDERS, start=1):
        dev = SimulatedDevice(unit)
        dev.set_nivus(*NIVUS_VALUES[order], order=order)
        devices.append(dev)
    return devices


def config_for(connection: dict[str, Any], devices: list[dict[str, Any]], **extra: Any) -> Any:
    doc = {"connections": {"c1": {"timeout": 0.5, "retries": 1, **connection}}, "devices": devices, **extra}
    return parse_config(doc, ".", env={}, require_api=False)


@pytest.fixture(params=["tcp", "rtu_over_tcp", "rtu"])
def nivus_bus(request, socat_pair_factory) -> Iterator[tuple[dict[str, Any], list[SimulatedDevice]]]:
    """Four Nivus transmitters (unit 1-4, one per word order) on each kind of link."""
    devices = nivus_devices()
    if request.param == "rtu":
        pair = socat_pair_factory()
        server = SimServer(devices, serial_port=pair.a, baudrate=115200).start()
        conn = {"transport": "rtu", "serial_port": pair.b, "baudrate": 115200}
    else:
        port = free_port()
        server = SimServer(devices, port=port, rtu_over_tcp=request.param == "rtu_over_tcp").start()
        conn = {"transport": request.param, "host": "127.0.0.1", "port": port}
    yield conn, devices
    server.stop()


@pytest.fixture
def socat_pair_factory(tmp_path: Path) -> Iterator[Callable[[], SocatPair]]:
    pairs: list[SocatPair] = []

    def make() -> SocatPair:
        if shutil.which("socat") is None:
            pytest.skip("socat is not installed")
        directory = tmp_path / f"pair{len(pairs)}"
        directory.mkdir()
        pair = SocatPair(directory).start()
        pairs.append(pair)
        return pair

    yield make
    for pair in pairs:
        pair.stop()


def test_reads_exact_nivus_values_in_all_four_orders(nivus_bus):
    conn, sims = nivus_bus
    devices = [
        {"id": f"nivus-{order.value}", "connection": "c1", "unit": unit, "map": "nivus", "order": order.value}
        for unit, order in enumerate(ORDERS, start=1)
    ]
    records = poll_once(config_for(conn, devices))
    assert [r["device_id"] for r in records] == [f"nivus-{o.value}" for o in ORDERS]
    for record, order in zip(records, ORDERS, strict=True):
        flow, total, temp, status = NIVUS_VALUES[order]
        assert record["modbus_ok"] == 1, record
        assert "modbus_error" not in record
        assert record["flow_rate"] == shortest_float32(flow)
        assert record["totalizer"] == shortest_float32(total)
        assert record["temperature"] == shortest_float32(temp)
        assert record["status"] == status
        assert record["status_sensor_error"] is bool(status & 1)
        assert record["status_system_error"] is bool(status & 0x8000)
        assert datetime.fromisoformat(record["ts"]).utcoffset() is not None
    # The whole Nivus map is one request per poll (registers 0-10, gap 6-9 coalesced).
    for sim in sims:
        assert sim.requests == [(Table.HOLDING, 0, 11)]


def test_wrong_order_is_visible_not_silently_right(nivus_bus):
    conn, _ = nivus_bus
    # Unit 2 stores CDAB; reading it as ABCD must not yield the right flow rate.
    records = poll_once(config_for(conn, [{"id": "n", "connection": "c1", "unit": 2, "map": "nivus"}]))
    assert records[0].get("flow_rate") != shortest_float32(NIVUS_VALUES[WordOrder.CDAB][0])


def test_every_table_type_and_address_notation():
    port = free_port()
    dev = SimulatedDevice(7)
    dev.set_value(Table.HOLDING, 0, -1234, DataType.INT16, WordOrder.ABCD)  # 1-based 1
    dev.set_value(Table.HOLDING, 1, 4_000_000_000, DataType.UINT32, WordOrder.CDAB)
    dev.set_value(Table.HOLDING, 3, -2_000_000_000, DataType.INT32, WordOrder.BADC)
    dev.set_value(Table.HOLDING, 5, 3.141592653589793, DataType.FLOAT64, WordOrder.DCBA)
    dev.set_value(Table.INPUT, 20, 2500, DataType.UINT16, WordOrder.ABCD)  # "30021"
    dev.set_value(Table.INPUT, 40, 0b1010, DataType.UINT16, WordOrder.BADC)
    dev.set_bit(Table.COIL, 3, True)
    dev.set_bit(Table.COIL, 4, False)
    dev.set_bit(Table.DISCRETE, 17, True)
    registers = [
        {"name": "level_raw", "address": 1, "type": "int16"},
        {"name": "pulses", "address": 2, "type": "uint32", "order": "CDAB"},
        {"name": "offset_i32", "address": 4, "type": "int32", "order": "BADC"},
        {"name": "pi", "address": "400006", "type": "float64", "order": "DCBA"},
        {"name": "level_mm", "address": "30021", "type": "uint16", "scale": 0.1, "offset": -50},
        {
            "name": "alarms",
            "table": "input",
            "address": 41,
            "type": "uint16",
            "order": "BADC",
            "bits": {"1": "alarm_high", "2": "alarm_low", "3": "alarm_dry"},
            "emit_value": False,
        },
        {"name": "pump_on", "table": "coil", "address": 4},
        {"name": "valve_open", "table": "coil", "address": 5},
        {"name": "door", "address": "10018"},
    ]
    device = {"id": "plc-7", "connection": "c1", "unit": 7, "address_base": 1, "registers": registers}
    with SimServer([dev], port=port):
        (record,) = poll_once(config_for({"transport": "tcp", "host": "127.0.0.1", "port": port}, [device]))
    assert record == {
        "device_id": "plc-7",
        "ts": record["ts"],
        "level_raw": -1234,
        "pulses": 4_000_000_000,
        "offset_i32": -2_000_000_000,
        "pi": 3.141592653589793,
        "level_mm": 2500 * 0.1 - 50,
        "alarm_high": True,
        "alarm_low": False,
        "alarm_dry": True,
        "pump_on": True,
        "valve_open": False,
        "door": True,
        "modbus_ok": 1,
    }


def test_nan_inf_exceptions_and_silence_are_reported_never_forwarded_as_numbers():
    port = free_port()
    nan_dev, exc_dev, silent_dev = SimulatedDevice(1), SimulatedDevice(2), SimulatedDevice(3)
    nan_dev.set_nivus(float("nan"), 10.0, float("inf"), 0)
    exc_dev.exception = 4
    silent_dev.silent = True
    devices = [{"id": f"n{u}", "connection": "c1", "unit": u, "map": "nivus"} for u in (1, 2, 3)]
    with SimServer([nan_dev, exc_dev, silent_dev], port=port):
        conn = {"transport": "tcp", "host": "127.0.0.1", "port": port, "timeout": 0.2, "retries": 1}
        nan_rec, exc_rec, silent_rec = poll_once(config_for(conn, devices))
    assert "flow_rate" not in nan_rec and "temperature" not in nan_rec
    assert nan_rec["totalizer"] == 10.0 and nan_rec["status"] == 0
    assert nan_rec["modbus_ok"] == 0
    assert "flow_rate: NaN" in nan_rec["modbus_error"] and "temperature: +Inf" in nan_rec["modbus_error"]
    assert set(exc_rec) == {"device_id", "ts", "modbus_ok", "modbus_error"}
    assert exc_rec["modbus_ok"] == 0 and "exception 4" in exc_rec["modbus_error"]
    assert set(silent_rec) == {"device_id", "ts", "modbus_ok", "modbus_error"}
    assert "no response" in silent_rec["modbus_error"]
    assert len(silent_dev.requests) == 2  # retries = 1: asked twice, then gave up


def test_device_refusing_reads_across_holes_gets_gapless_requests():
    port = free_port()
    dev = SimulatedDevice(1)
    dev.set_nivus(5.5, 6.5, 7.5, 3)
    dev.invalid = {(Table.HOLDING, 7)}  # an unmapped register inside the coalesced read
    with SimServer([dev], port=port):
        config = config_for(
            {"transport": "tcp", "host": "127.0.0.1", "port": port},
            [{"id": "n", "connection": "c1", "unit": 1, "map": "nivus"}],
        )
        (record,) = poll_once(config)
    assert record["modbus_ok"] == 1 and record["flow_rate"] == 5.5 and record["status"] == 3
    assert dev.requests == [(Table.HOLDING, 0, 11), (Table.HOLDING, 0, 6), (Table.HOLDING, 10, 1)]


def test_cannot_connect_is_a_health_record():
    port = free_port()  # nothing listens here
    config = config_for(
        {"transport": "tcp", "host": "127.0.0.1", "port": port},
        [{"id": "n", "connection": "c1", "unit": 1, "map": "nivus"}],
    )
    (record,) = poll_once(config)
    assert record["modbus_ok"] == 0 and "cannot connect" in record["modbus_error"]


class Collector:
    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def __call__(self, records: list[dict[str, Any]]) -> None:
        with self.lock:
            self.records.extend(records)

    def of(self, device_id: str, **match: Any) -> list[dict[str, Any]]:
        with self.lock:
            return [
                r for r in self.records if r["device_id"] == device_id and all(r.get(k) == v for k, v in match.items())
            ]


def test_server_taken_away_and_back_recovers_while_another_device_keeps_polling():
    port_a, port_b = free_port(), free_port()
    dev_a, dev_b = SimulatedDevice(1), SimulatedDevice(1)
    dev_a.set_nivus(1.5, 0.0, 10.0, 0)
    dev_b.set_nivus(2.5, 0.0, 20.0, 0)
    doc = {
        "connections": {
            "a": {
                "transport": "tcp",
                "host": "127.0.0.1",
                "port": port_a,
                "timeout": 0.3,
                "retries": 0,
                "reconnect_min": 0.05,
                "reconnect_max": 0.3,
            },
            "b": {"transport": "tcp", "host": "127.0.0.1", "port": port_b, "timeout": 0.3, "retries": 0},
        },
        "devices": [
            {"id": "dev-a", "connection": "a", "unit": 1, "map": "nivus", "poll_period": 0.05},
            {"id": "dev-b", "connection": "b", "unit": 1, "map": "nivus", "poll_period": 0.05},
        ],
    }
    config = parse_config(doc, ".", env={}, require_api=False)
    server_a = SimServer([dev_a], port=port_a).start()
    server_b = SimServer([dev_b], port=port_b).start()
    sink = Collector()
    poller = Poller(config, sink)
    poller.start()
    try:
        wait_for(lambda: sink.of("dev-a", flow_rate=1.5) and sink.of("dev-b", flow_rate=2.5))
        server_a.stop()
        down = wait_for(lambda: sink.of("dev-a", modbus_ok=0))
        b_before = len(sink.of("dev-b", modbus_ok=1))
        # dev-b keeps delivering while dev-a's link is gone, and dev-a reports why.
        wait_for(lambda: len(sink.of("dev-b", modbus_ok=1)) >= b_before + 10)
        wait_for(lambda: len(sink.of("dev-a", modbus_ok=0)) >= 3)
        assert any(
            "cannot connect" in r["modbus_error"] or "link down" in r["modbus_error"]
            for r in sink.of("dev-a", modbus_ok=0)
        )
        dev_a.set_nivus(3.25, 0.0, 10.0, 0)
        server_a = SimServer([dev_a], port=port_a).start()
        recovered = wait_for(lambda: sink.of("dev-a", flow_rate=3.25))
        assert recovered[0]["ts"] > down[0]["ts"]
        assert poller.alive()
    finally:
        poller.stop()
        server_a.stop()
        server_b.stop()
    assert not poller.alive()


def test_silent_device_does_not_starve_its_bus_neighbour(socat_pair):
    loud, quiet = SimulatedDevice(1), SimulatedDevice(2)
    loud.set_nivus(4.5, 0.0, 0.0, 0)
    quiet.set_nivus(6.5, 0.0, 0.0, 0)
    quiet.silent = True
    doc = {
        "connections": {
            "bus": {"transport": "rtu", "serial_port": socat_pair.b, "baudrate": 115200, "timeout": 0.15, "retries": 0}
        },
        "devices": [
            {"id": "loud", "connection": "bus", "unit": 1, "map": "nivus", "poll_period": 0.05},
            {"id": "quiet", "connection": "bus", "unit": 2, "map": "nivus", "poll_period": 0.05, "backoff_max": 0.8},
        ],
    }
    config = parse_config(doc, ".", env={}, require_api=False)
    sink = Collector()
    with SimServer([loud, quiet], serial_port=socat_pair.a, baudrate=115200):
        poller = Poller(config, sink)
        poller.start()
        try:
            wait_for(lambda: len(sink.of("loud", modbus_ok=1)) >= 40)
            # Backoff: the silent unit is asked far less often than its healthy neighbour.
            assert len(quiet.requests) * 3 < len(loud.requests)
            assert sink.of("quiet", modbus_ok=0)
            quiet.silent = False
            wait_for(lambda: sink.of("quiet", flow_rate=6.5))
        finally:
            poller.stop()


def test_serial_adapter_unplugged_and_back(socat_pair_factory):
    pair = socat_pair_factory()
    dev = SimulatedDevice(1)
    dev.set_nivus(8.5, 0.0, 0.0, 0)
    doc = {
        "connections": {
            "bus": {
                "transport": "rtu",
                "serial_port": pair.b,
                "baudrate": 115200,
                "timeout": 0.2,
                "retries": 0,
                "reconnect_min": 0.05,
                "reconnect_max": 0.2,
            }
        },
        "devices": [{"id": "n", "connection": "bus", "unit": 1, "map": "nivus", "poll_period": 0.05}],
    }
    config = parse_config(doc, ".", env={}, require_api=False)
    sink = Collector()
    server = SimServer([dev], serial_port=pair.a, baudrate=115200).start()
    poller = Poller(config, sink)
    poller.start()
    try:
        wait_for(lambda: sink.of("n", flow_rate=8.5))
        server.stop()
        pair.stop()  # the pty vanishes like an unplugged USB adapter
        wait_for(
            lambda: any(
                "link down" in r.get("modbus_error", "") or "cannot connect" in r.get("modbus_error", "")
                for r in sink.of("n", modbus_ok=0)
            )
        )
        pair.start()
        dev.set_nivus(9.5, 0.0, 0.0, 0)
        server = SimServer([dev], serial_port=pair.a, baudrate=115200).start()
        wait_for(lambda: sink.of("n", flow_rate=9.5))
    finally:
        poller.stop()
        server.stop()


# ---- config --------------------------------------------------------------------------


def test_example_config_is_valid():
    example = Path(__file__).resolve().parents[2] / "docker" / "modbus.example.toml"
    config = load_config(example, env={"FLUXIO_API_KEY": "k"})
    assert config.api is not None and config.api.api_key == "k"
    assert {c.transport for c in config.connections.values()} == {"tcp", "rtu", "rtu_over_tcp"}
    assert any(e.name == "flow_rate" for d in config.devices for e in d.registers)


@pytest.mark.parametrize(
    ("mutation", "message"),
    [
        (lambda d: d["devices"][0].update(unit=300), "devices[0].unit"),
        (lambda d: d["devices"][0].update(poll_periode=3), "unknown key(s) poll_periode"),
        (lambda d: d["devices"][0].update(connection="nope"), "devices[0].connection"),
        (lambda d: d["devices"][0].update(order="ABDC"), "devices[0].order"),
        (lambda d: d["devices"][0]["registers"][0].update(type="float"), "devices[0].registers[0].type"),
        (lambda d: d["devices"][0]["registers"][0].update(address=0), "devices[0].registers[0].address"),
        (lambda d: d["devices"][0]["registers"][0].update(name="flow rate"), "metric name 'flow rate'"),
        (lambda d: d["devices"][0]["registers"][0].update(name="status_sensor_error"), "used twice"),
        (lambda d: d["devices"][0]["registers"][0].update(name="modbus_ok"), "reserved"),
        (lambda d: d["devices"][0].update(id="bad id"), "devices[0].id"),
        (lambda d: d["connections"]["c1"].update(transport="udp"), "connections.c1.transport"),
        (lambda d: d.pop("api"), "[api]"),
        (lambda d: d["api"].pop("api_key"), "FLUXIO_API_KEY"),
    ],
)
def test_config_errors_say_where(mutation, message):
    doc = {
        "api": {"url": "http://127.0.0.1:1", "api_key": "k"},
        "connections": {"c1": {"transport": "tcp", "host": "127.0.0.1"}},
        "devices": [
            {
                "id": "d1",
                "connection": "c1",
                "unit": 1,
                "address_base": 1,
                "map": "nivus",
                "registers": [{"name": "level", "address": 21, "type": "float32", "order": "CDAB"}],
            }
        ],
    }
    mutation(doc)
    with pytest.raises(ConfigError) as info:
        parse_config(doc, ".", env={})
    assert message in str(info.value)


def test_config_register_overrides_builtin_entry():
    doc = {
        "connections": {"c1": {"transport": "tcp", "host": "h"}},
        "devices": [
            {
                "id": "d1",
                "connection": "c1",
                "map": "nivus",
                "map_table": "input",
                "order": "CDAB",
                "registers": [
                    {"name": "status", "table": "input", "address": 10, "bits": {"0": "s_fault", "5": "s_dry"}}
                ],
            }
        ],
    }
    config = parse_config(doc, ".", env={}, require_api=False)
    entries = {e.name: e for e in config.devices[0].registers}
    assert entries["flow_rate"].table is Table.INPUT and entries["flow_rate"].order is WordOrder.CDAB
    assert entries["status"].bits == ((0, "s_fault"), (5, "s_dry"))
