"""Register maps, data types, word orders, request planning and decoding.

Everything here is pure (no I/O, no clock) so it can be property-tested; the poller
feeds it the integers/bits pymodbus returned and gets readings or error texts back.

Addresses in this module are always Modbus *protocol* addresses (0-based, the number
that goes on the wire). Converting from a manual's 1-based or 4xxxx notation happens
once, in `parse_address`, so nothing downstream has to guess.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

# Protocol limits (Modbus Application Protocol v1.1b3, FC 01-04). Reading more in one
# request earns an exception response, so the planner never goes above them.
MAX_REGISTERS_PER_READ = 125
MAX_BITS_PER_READ = 2000

Value = int | float | bool


class Table(StrEnum):
    """The four Modbus data tables, named as the config file names them."""

    HOLDING = "holding"
    INPUT = "input"
    COIL = "coil"
    DISCRETE = "discrete"

    @property
    def is_bit(self) -> bool:
        return self in (Table.COIL, Table.DISCRETE)


# Modicon reference prefixes: 0xxxx coils, 1xxxx discrete inputs, 3xxxx input
# registers, 4xxxx holding registers. The number after the prefix is 1-based.
MODICON_PREFIX = {"0": Table.COIL, "1": Table.DISCRETE, "3": Table.INPUT, "4": Table.HOLDING}
TABLE_ALIASES = {
    "holding": Table.HOLDING,
    "holding_register": Table.HOLDING,
    "holding_registers": Table.HOLDING,
    "hr": Table.HOLDING,
    "input": Table.INPUT,
    "input_register": Table.INPUT,
    "input_registers": Table.INPUT,
    "ir": Table.INPUT,
    "coil": Table.COIL,
    "coils": Table.COIL,
    "co": Table.COIL,
    "discrete": Table.DISCRETE,
    "discrete_input": Table.DISCRETE,
    "discrete_inputs": Table.DISCRETE,
    "di": Table.DISCRETE,
}


class DataType(StrEnum):
    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"
    UINT32 = "uint32"
    INT64 = "int64"
    UINT64 = "uint64"
    FLOAT32 = "float32"
    FLOAT64 = "float64"
    BOOL = "bool"  # a single coil / discrete input

    @property
    def words(self) -> int:
        """Registers occupied (bits occupy one coil each)."""
        return _STRUCT[self][1]

    @property
    def is_float(self) -> bool:
        return self in (DataType.FLOAT32, DataType.FLOAT64)

    @property
    def is_integer(self) -> bool:
        return self not in (DataType.FLOAT32, DataType.FLOAT64, DataType.BOOL)


_STRUCT: dict[DataType, tuple[str, int]] = {
    DataType.INT16: ("h", 1),
    DataType.UINT16: ("H", 1),
    DataType.INT32: ("i", 2),
    DataType.UINT32: ("I", 2),
    DataType.INT64: ("q", 4),
    DataType.UINT64: ("Q", 4),
    DataType.FLOAT32: ("f", 2),
    DataType.FLOAT64: ("d", 4),
    DataType.BOOL: ("?", 1),
}


class WordOrder(StrEnum):
    """Byte order of a multi-register value, in the letters gateways use.

    For a 32-bit value whose big-endian bytes are A B C D:
      ABCD  registers [AB, CD]  big-endian, the Modbus default
      CDAB  registers [CD, AB]  word swap ("little-endian word order")
      BADC  registers [BA, DC]  byte swap within each register
      DCBA  registers [DC, BA]  fully little-endian
    64-bit values extend the same rule: CDAB reverses all four registers, BADC swaps
    the bytes inside each one, DCBA does both. 16-bit values only see the byte swap
    (ABCD == CDAB, BADC == DCBA).
    """

    ABCD = "ABCD"
    CDAB = "CDAB"
    BADC = "BADC"
    DCBA = "DCBA"

    @property
    def swap_words(self) -> bool:
        return self in (WordOrder.CDAB, WordOrder.DCBA)

    @property
    def swap_bytes(self) -> bool:
        return self in (WordOrder.BADC, WordOrder.DCBA)


class BadValue(ValueError):
    """A register decoded to something that must not be forwarded as a number."""


@dataclass(frozen=True)
class RegisterEntry:
    """One named value in a device's register map.

    `bits` maps bit positions (0 = least significant bit of the decoded integer) to
    metric names; each named bit is forwarded as its own boolean reading.
    `emit_value=False` forwards only the named bits, not the integer itself.
    """

    name: str
    table: Table
    address: int
    dtype: DataType
    order: WordOrder = WordOrder.ABCD
    scale: float = 1.0
    offset: float = 0.0
    bits: tuple[tuple[int, str], ...] = ()
    emit_value: bool = True

    def __post_init__(self) -> None:
        if not 0 <= self.address <= 0xFFFF:
            raise ValueError(f"{self.name}: address {self.address} outside 0..65535")
        if self.table.is_bit != (self.dtype is DataType.BOOL):
            raise ValueError(
                f"{self.name}: type {self.dtype.value} does not fit table {self.table.value}"
                " (coils/discrete inputs are 'bool', registers are numeric)"
            )
        if self.address + self.count - 1 > 0xFFFF:
            raise ValueError(f"{self.name}: value runs past address 65535")
        if self.bits and not self.dtype.is_integer:
            raise ValueError(f"{self.name}: named bits need an integer type")
        width = 16 * self.dtype.words
        for position, _bit_name in self.bits:
            if not 0 <= position < width:
                raise ValueError(f"{self.name}: bit {position} outside 0..{width - 1}")
        if not (math.isfinite(self.scale) and math.isfinite(self.offset)):
            raise ValueError(f"{self.name}: scale and offset must be finite")

    @property
    def count(self) -> int:
        """Registers (or bits) this entry occupies."""
        return self.dtype.words

    @property
    def end(self) -> int:
        """One past the last address."""
        return self.address + self.count

    @property
    def metric_names(self) -> list[str]:
        names = [self.name] if self.emit_value else []
        return names + [bit_name for _pos, bit_name in self.bits]


@dataclass(frozen=True)
class ReadBlock:
    """One Modbus read request and the entries it serves."""

    table: Table
    address: int
    count: int
    entries: tuple[RegisterEntry, ...] = field(default_factory=tuple)

    @property
    def end(self) -> int:
        return self.address + self.count

    @property
    def has_gaps(self) -> bool:
        """True if the request also reads addresses no entry asked for."""
        covered = set()
        for entry in self.entries:
            covered.update(range(entry.address, entry.end))
        return len(covered) < self.count

    def describe(self) -> str:
        return f"{self.table.value} {self.address}..{self.end - 1}"


# ---- addresses ---------------------------------------------------------------------------


def parse_table(value: str) -> Table:
    try:
        return TABLE_ALIASES[value.strip().lower()]
    except KeyError:
        names = ", ".join(t.value for t in Table)
        raise ValueError(f"unknown table {value!r}; expected one of {names}") from None


def parse_address(value: int | str, address_base: int, table: Table | None) -> tuple[Table, int]:
    """Turn a config address into (table, 0-based protocol address).

    - an integer is taken in the device's `address_base` (0: as on the wire,
      1: as most manuals print it, so register 1 is protocol address 0);
    - a string of 5 or 6 digits is Modicon notation ("40001", "300010"), which is
      1-based by definition and names the table itself, whatever address_base says.
    """
    if address_base not in (0, 1):
        raise ValueError(f"address_base must be 0 or 1, not {address_base!r}")
    if isinstance(value, bool):
        raise TypeError("address must be an integer or a Modicon string like '40001'")
    if isinstance(value, int):
        if table is None:
            raise ValueError("an integer address needs a table (holding, input, coil, discrete)")
        protocol = value - address_base
        if not 0 <= protocol <= 0xFFFF:
            raise ValueError(
                f"address {value} with address_base {address_base} is outside the protocol range"
                f" {address_base}..{0xFFFF + address_base}"
            )
        return table, protocol
    if isinstance(value, str):
        text = value.strip()
        if not (text.isdigit() and len(text) in (5, 6) and text[0] in MODICON_PREFIX):
            raise ValueError(
                f"address {value!r}: strings must be Modicon references such as '40001' or"
                " '300010'; write plain addresses as integers"
            )
        implied = MODICON_PREFIX[text[0]]
        number = int(text[1:])
        if not 1 <= number <= 0x10000:
            raise ValueError(f"address {value!r}: reference number must be 1..65536")
        if table is not None and table is not implied:
            raise ValueError(f"address {value!r} names the {implied.value} table but table = {table.value!r}")
        return implied, number - 1
    raise TypeError(f"address must be an integer or a Modicon string, not {type(value).__name__}")


# ---- encode / decode ---------------------------------------------------------------------


def _swap16(word: int) -> int:
    return ((word & 0xFF) << 8) | (word >> 8)


def _to_wire(words: list[int], order: WordOrder) -> list[int]:
    # The transform is its own inverse, so one function serves encode and decode.
    if order.swap_words:
        words = words[::-1]
    if order.swap_bytes:
        words = [_swap16(w) for w in words]
    return words


def decode_raw(registers: Sequence[int], dtype: DataType, order: WordOrder = WordOrder.ABCD) -> int | float:
    """Registers as read from the device -> the number they hold (no scaling)."""
    if dtype is DataType.BOOL:
        raise ValueError("bool values come from coils/discrete inputs, not registers")
    fmt, words = _STRUCT[dtype]
    if len(registers) != words:
        raise ValueError(f"{dtype.value} needs {words} registers, got {len(registers)}")
    for word in registers:
        if not 0 <= word <= 0xFFFF:
            raise ValueError(f"register value {word} is not 16-bit")
    canonical = _to_wire(list(registers), order)
    raw = b"".join(w.to_bytes(2, "big") for w in canonical)
    return struct.unpack(">" + fmt, raw)[0]


def encode_raw(value: float, dtype: DataType, order: WordOrder = WordOrder.ABCD) -> list[int]:
    """The registers a device in `order` would hold for `value` (tests, simulators)."""
    if dtype is DataType.BOOL:
        raise ValueError("bool values are bits, not registers")
    fmt, words = _STRUCT[dtype]
    raw = struct.pack(">" + fmt, value)
    canonical = [int.from_bytes(raw[i : i + 2], "big") for i in range(0, 2 * words, 2)]
    return _to_wire(canonical, order)


def decode_entry(entry: RegisterEntry, data: Sequence[int] | Sequence[bool]) -> dict[str, Value]:
    """One entry's slice of a read -> {metric: value}; raises BadValue if unusable.

    Scaling happens after the finite check on the raw value *and* on the result,
    because a huge scale can turn a finite float into Inf.
    """
    if entry.dtype is DataType.BOOL:
        if len(data) != 1:
            raise ValueError(f"{entry.name}: expected 1 bit, got {len(data)}")
        return {entry.name: bool(data[0])}
    raw = decode_raw([int(w) for w in data], entry.dtype, entry.order)
    if isinstance(raw, float) and not math.isfinite(raw):
        raise BadValue(f"{entry.name}: {_float_text(raw)} at {entry.table.value} {entry.address}")
    if entry.dtype is DataType.FLOAT32:
        raw = shortest_float32(raw)
    out: dict[str, Value] = {}
    if entry.emit_value:
        if entry.scale == 1.0 and entry.offset == 0.0:
            value: Value = raw
        else:
            value = raw * entry.scale + entry.offset
            if not math.isfinite(value):
                raise BadValue(f"{entry.name}: {raw!r} scaled by {entry.scale} is not finite")
        out[entry.name] = value
    if entry.bits:
        as_int = int(raw)
        if as_int < 0:
            # Signed status words: bit 15 must still read as bit 15.
            as_int &= (1 << (16 * entry.dtype.words)) - 1
        for position, bit_name in entry.bits:
            out[bit_name] = bool((as_int >> position) & 1)
    return out


def shortest_float32(value: float) -> float:
    """The shortest decimal that is still the same float32.

    A transmitter's 14.251256 arrives as the float32 nearest to it, whose exact double
    is 14.251255989074707; forwarding the short form stores what the device meant
    without losing a bit (it converts back to the identical float32).
    """
    packed = struct.pack(">f", value)  # also rounds a double argument to float32 first
    value = struct.unpack(">f", packed)[0]
    for digits in range(6, 10):
        candidate = float(f"{value:.{digits}g}")
        if struct.pack(">f", candidate) == packed:
            return candidate
    return value


def _float_text(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    return "+Inf" if value > 0 else "-Inf"


def decode_block(block: ReadBlock, data: Sequence[int] | Sequence[bool]) -> tuple[dict[str, Value], list[str]]:
    """A block's response -> (readings, error texts). Bad entries are skipped, not zeroed."""
    if len(data) < block.count:
        return {}, [f"{block.describe()}: short response ({len(data)} of {block.count})"]
    readings: dict[str, Value] = {}
    errors: list[str] = []
    for entry in block.entries:
        start = entry.address - block.address
        try:
            readings.update(decode_entry(entry, data[start : start + entry.count]))
        except BadValue as exc:
            errors.append(str(exc))
    return readings, errors


def metric_names(entries: Iterable[RegisterEntry]) -> list[str]:
    return [name for entry in entries for name in entry.metric_names]


def merge_entries(base: Iterable[RegisterEntry], overrides: Iterable[RegisterEntry]) -> list[RegisterEntry]:
    """A built-in map plus config entries; a config entry replaces a same-named one."""
    merged: dict[str, RegisterEntry] = {e.name: e for e in base}
    for entry in overrides:
        merged[entry.name] = entry
    return list(merged.values())


def bits_from_mapping(mapping: Mapping[str | int, str]) -> tuple[tuple[int, str], ...]:
    """TOML keys are strings; `{"0" = "fault"}` -> ((0, "fault"),), sorted by bit."""
    out = []
    for key, name in mapping.items():
        try:
            position = int(key)
        except (TypeError, ValueError):
            raise ValueError(f"bit key {key!r} is not a bit number") from None
        if not isinstance(name, str) or not name:
            raise ValueError(f"bit {key!r}: name must be a non-empty string")
        out.append((position, name))
    return tuple(sorted(out))
