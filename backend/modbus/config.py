"""TOML configuration for the poller: loading, defaults and validation.

Errors name the place in the file (`devices[1].registers[0].type: ...`) because the
person reading them is an installer on a gateway console, not a developer.
See docker/modbus.example.toml for a commented example.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import nivus
from .planning import plan_reads
from .registers import (
    DataType,
    RegisterEntry,
    WordOrder,
    bits_from_mapping,
    merge_entries,
    parse_address,
    parse_table,
)
from .toml_section import ConfigError, Section

TRANSPORTS = ("tcp", "rtu", "rtu_over_tcp")
# Same character rules as the ingest API (backend/parsing/base.py) so a name that the
# API would reject is caught at startup instead of dead-lettering every batch.
NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,63}$")
DEVICE_RE = re.compile(r"\A[A-Za-z0-9_.:\-]{1,128}\Z")  # \Z: "$" also matches before a final newline
HEALTH_METRICS = ("modbus_ok", "modbus_error")
DEFAULT_API_KEY_ENV = "FLUXIO_API_KEY"


@dataclass(frozen=True)
class ApiConfig:
    url: str
    api_key: str
    path: str = "/api/ingest"
    batch_size: int = 200
    timeout: float = 10.0
    verify_tls: bool | str = True
    retry_min: float = 1.0
    retry_max: float = 300.0
    auth_retry: float = 300.0

    @property
    def endpoint(self) -> str:
        return self.url.rstrip("/") + "/" + self.path.lstrip("/")


@dataclass(frozen=True)
class QueueConfig:
    path: str
    max_records: int = 100_000
    overflow: str = "drop_oldest"
    max_dead_letters: int = 10_000


@dataclass(frozen=True)
class ConnectionConfig:
    name: str
    transport: str
    host: str = ""
    port: int = 502
    serial_port: str = ""
    baudrate: int = 9600
    parity: str = "N"
    bytesize: int = 8
    stopbits: int = 1
    timeout: float = 1.0
    retries: int = 2
    reconnect_min: float = 1.0
    reconnect_max: float = 60.0

    def describe(self) -> str:
        if self.transport == "rtu":
            return f"rtu {self.serial_port} {self.baudrate} {self.bytesize}{self.parity}{self.stopbits}"
        return f"{self.transport} {self.host}:{self.port}"


@dataclass(frozen=True)
class DeviceConfig:
    device_id: str
    connection: str
    unit: int
    registers: tuple[RegisterEntry, ...]
    poll_period: float = 10.0
    timeout: float = 1.0
    retries: int = 2
    max_gap: int = 8
    backoff_max: float = 300.0


@dataclass(frozen=True)
class Config:
    api: ApiConfig | None
    queue: QueueConfig
    connections: dict[str, ConnectionConfig]
    devices: tuple[DeviceConfig, ...]

    def devices_on(self, connection: str) -> list[DeviceConfig]:
        return [d for d in self.devices if d.connection == connection]


# ---- sections ----------------------------------------------------------------------------


def _api(data: Any, env: Mapping[str, str], require_key: bool = True) -> ApiConfig | None:
    if data is None:
        return None
    s = Section(data, "api")
    url = s.str_("url")
    if not url.startswith(("http://", "https://")):
        raise s.err("url", "must start with http:// or https://")
    key = s.str_("api_key", "")
    key_env = s.str_("api_key_env", DEFAULT_API_KEY_ENV)
    if not key:
        key = env.get(key_env, "")
    if not key and require_key:
        # Only sending needs the key: `run --stdout`, `check`, `probe` and `queue` work without.
        raise s.err("api_key", f"no API key: set api_key, or the environment variable {key_env}")
    verify = s._get("verify_tls", True)
    if not isinstance(verify, bool | str):
        raise s.err("verify_tls", "expected true/false or a CA bundle path")
    api = ApiConfig(
        url=url,
        api_key=key,
        path=s.str_("path", "/api/ingest"),
        batch_size=s.int_("batch_size", 200, 1, 10_000),
        timeout=s.float_("timeout", 10.0, 0.1),
        verify_tls=verify,
        retry_min=s.float_("retry_min", 1.0, 0.01),
        retry_max=s.float_("retry_max", 300.0, 0.01),
        auth_retry=s.float_("auth_retry", 300.0, 0.01),
    )
    s.check_unknown()
    return api


def _queue(data: Any, base_dir: Path) -> QueueConfig:
    s = Section(data or {}, "queue")
    path = s.str_("path", "modbus-queue.sqlite3")
    if path != ":memory:" and not os.path.isabs(path):
        # Relative to the config file so the same file works wherever it is started.
        path = str(base_dir / path)
    q = QueueConfig(
        path=path,
        max_records=s.int_("max_records", 100_000, 1),
        overflow=s.choice("overflow", ("drop_oldest", "drop_newest"), "drop_oldest"),
        max_dead_letters=s.int_("max_dead_letters", 10_000, 1),
    )
    s.check_unknown()
    return q


def _connection(name: str, data: Any) -> ConnectionConfig:
    s = Section(data, f"connections.{name}")
    transport = s.choice("transport", TRANSPORTS)
    if transport == "rtu":
        fields: dict[str, Any] = {
            "serial_port": s.str_("serial_port"),
            "baudrate": s.int_("baudrate", 9600, 50, 4_000_000),
            "parity": s.choice("parity", ("N", "E", "O"), "N"),
            "bytesize": s.int_("bytesize", 8, 7, 8),
            "stopbits": s.int_("stopbits", 1, 1, 2),
        }
    else:
        fields = {"host": s.str_("host"), "port": s.int_("port", 502, 1, 65535)}
    conn = ConnectionConfig(
        name=name,
        transport=transport,
        timeout=s.float_("timeout", 1.0, 0.01),
        retries=s.int_("retries", 2, 0, 10),
        reconnect_min=s.float_("reconnect_min", 1.0, 0.01),
        reconnect_max=s.float_("reconnect_max", 60.0, 0.01),
        **fields,
    )
    if conn.reconnect_max < conn.reconnect_min:
        raise s.err("reconnect_max", "must be >= reconnect_min")
    s.check_unknown()
    return conn


def _register(data: Any, where: str, address_base: int, default_order: WordOrder, default_table: str) -> RegisterEntry:
    s = Section(data, where)
    name = s.str_("name")
    try:
        table_name = s.str_("table", "")
        table = parse_table(table_name) if table_name else None
        address = s._get("address", None)
        if address is None:
            raise s.err("address", "is required")
        if table is None and not isinstance(address, str):
            table = parse_table(default_table)
        table, protocol_address = parse_address(address, address_base, table)
    except (ValueError, TypeError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise s.err("address", str(exc)) from None
    type_default = "bool" if table.is_bit else "uint16"
    type_name = s.str_("type", type_default).lower()
    try:
        dtype = DataType(type_name)
    except ValueError:
        raise s.err("type", f"{type_name!r} is not one of {', '.join(t.value for t in DataType)}") from None
    order_name = s.str_("order", default_order.value).upper()
    try:
        order = WordOrder(order_name)
    except ValueError:
        raise s.err("order", f"{order_name!r} is not one of ABCD, CDAB, BADC, DCBA") from None
    bits_raw = s._get("bits", {})
    if not isinstance(bits_raw, Mapping):
        raise s.err("bits", 'expected a table like { 0 = "fault", 3 = "alarm" }')
    try:
        bits = bits_from_mapping(bits_raw)
        entry = RegisterEntry(
            name=name,
            table=table,
            address=protocol_address,
            dtype=dtype,
            order=order,
            scale=s.float_("scale", 1.0, low=float("-inf")),
            offset=s.float_("offset", 0.0, low=float("-inf")),
            bits=bits,
            emit_value=bool(s._get("emit_value", True)),
        )
    except ValueError as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"{where}: {exc}") from None
    s.check_unknown()
    return entry


def _device(index: int, data: Any, connections: Mapping[str, ConnectionConfig]) -> DeviceConfig:
    where = f"devices[{index}]"
    s = Section(data, where)
    device_id = s.str_("id")
    if not DEVICE_RE.match(device_id):
        raise s.err("id", f"{device_id!r}: use 1-128 characters from A-Z a-z 0-9 _ . : -")
    conn_name = s.str_("connection")
    if conn_name not in connections:
        raise s.err("connection", f"{conn_name!r} is not defined under [connections]")
    conn = connections[conn_name]
    address_base = s.int_("address_base", 0, 0, 1)
    order_name = s.str_("order", "ABCD").upper()
    try:
        order = WordOrder(order_name)
    except ValueError:
        raise s.err("order", f"{order_name!r} is not one of ABCD, CDAB, BADC, DCBA") from None
    default_table = s.str_("table", "holding")
    try:
        parse_table(default_table)
    except ValueError as exc:
        raise s.err("table", str(exc)) from None

    base: list[RegisterEntry] = []
    map_name = s.str_("map", "")
    if map_name:
        if map_name not in nivus.BUILTIN_MAPS:
            raise s.err("map", f"unknown built-in map {map_name!r}; known: {', '.join(nivus.BUILTIN_MAPS)}")
        map_table = s.str_("map_table", "holding")
        try:
            base = nivus.BUILTIN_MAPS[map_name](parse_table(map_table), order)
        except ValueError as exc:
            raise s.err("map_table", str(exc)) from None
    regs_raw = s._get("registers", [])
    if not isinstance(regs_raw, list):
        raise s.err("registers", "expected [[devices.registers]] entries")
    own = [_register(r, f"{where}.registers[{i}]", address_base, order, default_table) for i, r in enumerate(regs_raw)]
    names = [e.name for e in own]
    if len(set(names)) != len(names):
        raise s.err("registers", "two entries have the same name")
    entries = merge_entries(base, own)
    if not entries:
        raise ConfigError(f'{where}: no registers (set map = "nivus" or add [[devices.registers]])')
    metrics: list[str] = []
    for e in entries:
        metrics.extend(e.metric_names)
    for metric in metrics:
        if not NAME_RE.match(metric):
            raise ConfigError(
                f"{where}: metric name {metric!r}: use 1-64 characters from A-Z a-z 0-9 _ . - (not starting with a digit)"
            )
        if metric in HEALTH_METRICS or metric in ("device_id", "ts", "timestamp", "time", "device"):
            raise ConfigError(f"{where}: metric name {metric!r} is reserved")
    dupes = sorted({m for m in metrics if metrics.count(m) > 1})
    if dupes:
        raise ConfigError(f"{where}: metric name(s) used twice: {', '.join(dupes)}")

    device = DeviceConfig(
        device_id=device_id,
        connection=conn_name,
        unit=s.int_("unit", 1, 0, 255),
        registers=tuple(entries),
        poll_period=s.float_("poll_period", 10.0, 0.01),
        timeout=s.float_("timeout", conn.timeout, 0.01),
        retries=s.int_("retries", conn.retries, 0, 10),
        max_gap=s.int_("max_gap", 8, 0, 120),
        backoff_max=s.float_("backoff_max", 300.0, 0.01),
    )
    s.check_unknown()
    plan_reads(device.registers, max_gap=device.max_gap)  # surfaces impossible maps now
    return device


def parse_config(
    data: Mapping[str, Any],
    base_dir: Path | str = ".",
    env: Mapping[str, str] | None = None,
    *,
    require_api: bool = True,
) -> Config:
    """Validate an already-parsed TOML document."""
    env = os.environ if env is None else env
    top = Section(data, "config")
    api = _api(top._get("api", None), env, require_key=require_api)
    if api is None and require_api:
        raise ConfigError("[api]: section is required (url and api key of the ingest service)")
    queue = _queue(top._get("queue", None), Path(base_dir))
    conns_raw = top._get("connections", None)
    if not isinstance(conns_raw, Mapping) or not conns_raw:
        raise ConfigError("[connections]: define at least one, e.g. [connections.rs485]")
    connections = {name: _connection(name, body) for name, body in conns_raw.items()}
    devices_raw = top._get("devices", None)
    if not isinstance(devices_raw, list) or not devices_raw:
        raise ConfigError("[[devices]]: define at least one device")
    devices = tuple(_device(i, d, connections) for i, d in enumerate(devices_raw))
    ids = [d.device_id for d in devices]
    if len(set(ids)) != len(ids):
        raise ConfigError("devices: two devices have the same id")
    for conn in connections.values():
        units = [d.unit for d in devices if d.connection == conn.name]
        if len(set(units)) != len(units):
            raise ConfigError(f"connections.{conn.name}: two devices share a unit id")
    top.check_unknown()
    return Config(api=api, queue=queue, connections=connections, devices=devices)


def load_config(
    path: str | os.PathLike[str], env: Mapping[str, str] | None = None, *, require_api: bool = True
) -> Config:
    """Read and validate a TOML file."""
    p = Path(path)
    try:
        with p.open("rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"{p}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from None
    return parse_config(data, p.resolve().parent, env, require_api=require_api)
