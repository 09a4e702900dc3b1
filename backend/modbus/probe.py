"""Probe: read a register range once and show every 32-bit pair in all four orders.

An installer rarely knows the word order (or whether the manual counts from 0 or 1)
for sure. Reading a known live value (e.g. a temperature around 15) and looking for
the column that shows it answers both: the order is the column, and if the sane value
appears one row lower than expected the manual is 1-based.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from pymodbus.client.base import ModbusBaseSyncClient

from .config import ConnectionConfig, DeviceConfig
from .poller import DevicePoller, ExceptionReply, LinkDown, NoResponse
from .registers import (
    DataType,
    ReadBlock,
    RegisterEntry,
    Table,
    WordOrder,
    decode_raw,
)

PROBE_TYPES = (DataType.FLOAT32, DataType.INT32, DataType.UINT32)


def decode_all_orders(
    pair: Sequence[int], dtypes: Sequence[DataType] = PROBE_TYPES
) -> dict[WordOrder, dict[DataType, int | float]]:
    """A register pair decoded as every 32-bit type in every order."""
    return {order: {dtype: decode_raw(pair, dtype, order) for dtype in dtypes} for order in WordOrder}


def plausible_float(value: float) -> bool:
    """A cheap "could a transmitter mean this" test to point an installer at an order.

    Wrong orders usually yield NaN, denormals or astronomically large numbers.
    """
    if not math.isfinite(value):
        return False
    return value == 0.0 or 1e-4 <= abs(value) <= 1e7


def read_range(
    client: ModbusBaseSyncClient, table: Table, address: int, count: int, unit: int, timeout: float, retries: int
) -> list[int] | list[bool]:
    """One read of `count` registers/bits at protocol `address` (raises on failure)."""
    dtype = DataType.BOOL if table.is_bit else DataType.UINT16
    entries = tuple(RegisterEntry(f"r{address + i}", table, address + i, dtype) for i in range(count))
    device = DeviceConfig(
        device_id="probe", connection="probe", unit=unit, registers=entries, timeout=timeout, retries=retries
    )
    block = ReadBlock(table, address, count, entries)
    poller = DevicePoller(device)
    client.comm_params.timeout_connect = timeout
    return list(poller._read(client, block))  # noqa: SLF001 - same package, shared retry rules


def _fmt_float(value: float) -> str:
    text = f"{value:.7g}"
    return text if len(text) <= 14 else f"{value:.3e}"


def format_probe(
    table: Table, address: int, values: Sequence[int] | Sequence[bool], address_base: int = 0, sliding: bool = False
) -> str:
    """The probe's report as text (pure, so it is tested without a device).

    Pairs start at the first register and step by two; `sliding` starts one at every
    register, which shows an off-by-one (0- vs 1-based) address as a sane value one row
    away from where it was expected.
    """
    lines: list[str] = []
    label = "addr" if address_base == 0 else "addr(1-based)"
    shown = address + address_base
    lines.append(
        f"{len(values)} {table.value} {'bits' if table.is_bit else 'registers'} from protocol address"
        f" {address} (0-based){f' = {shown} 1-based' if address_base else ''}"
    )
    if table.is_bit:
        for i, bit in enumerate(values):
            lines.append(f"  {address + i + address_base:>6}  {int(bool(bit))}")
        return "\n".join(lines)
    lines.append("")
    lines.append(f"  {label:>13}  {'dec':>6}  {'hex':>6}  {'int16':>6}")
    for i, word in enumerate(values):
        signed = word - 0x10000 if word >= 0x8000 else word
        lines.append(f"  {address + i + address_base:>13}  {word:>6}  0x{word:04X}  {signed:>6}")
    if len(values) < 2:
        return "\n".join(lines)
    lines.append("")
    step = 1 if sliding else 2
    lines.append(f"32-bit values from register pairs{' at every offset' if sliding else ''} ('*' = plausible float):")
    lines.append(f"  {label:>13}  order  {'float32':>15}  {'int32':>11}  {'uint32':>10}")
    for i in range(0, len(values) - 1, step):
        table_ = decode_all_orders([int(values[i]), int(values[i + 1])])
        for n, order in enumerate(WordOrder):
            decoded = table_[order]
            f32 = float(decoded[DataType.FLOAT32])
            mark = "*" if plausible_float(f32) else " "
            first = f"{address + i + address_base:>13}" if n == 0 else " " * 13
            lines.append(
                f"  {first}  {order.value}  {_fmt_float(f32):>14}{mark}  {decoded[DataType.INT32]:>11}"
                f"  {decoded[DataType.UINT32]:>10}"
            )
    return "\n".join(lines)


def probe(
    conn: ConnectionConfig,
    client: ModbusBaseSyncClient,
    table: Table,
    address: int,
    count: int,
    unit: int,
    address_base: int = 0,
    sliding: bool = False,
) -> tuple[int, str]:
    """Connect, read, format. Returns (exit code, text)."""
    try:
        if not client.connect():
            return 2, f"cannot connect to {conn.describe()}"
        values = read_range(client, table, address, count, unit, conn.timeout, conn.retries)
    except (LinkDown, NoResponse, ExceptionReply) as exc:
        return 1, f"read failed: {exc}"
    finally:
        client.close()
    return 0, format_probe(table, address, values, address_base, sliding)
