"""Pure decoding and request planning: property tests, no I/O."""

from __future__ import annotations

import itertools
import math
import struct

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from pymodbus.client import ModbusTcpClient

from backend.modbus import nivus
from backend.modbus.planning import plan_reads
from backend.modbus.probe import decode_all_orders, plausible_float
from backend.modbus.registers import (
    MAX_BITS_PER_READ,
    MAX_REGISTERS_PER_READ,
    BadValue,
    DataType,
    ReadBlock,
    RegisterEntry,
    Table,
    WordOrder,
    decode_block,
    decode_entry,
    decode_raw,
    encode_raw,
    parse_address,
    shortest_float32,
)

INT_RANGES = {
    DataType.INT16: (-(2**15), 2**15 - 1),
    DataType.UINT16: (0, 2**16 - 1),
    DataType.INT32: (-(2**31), 2**31 - 1),
    DataType.UINT32: (0, 2**32 - 1),
    DataType.INT64: (-(2**63), 2**63 - 1),
    DataType.UINT64: (0, 2**64 - 1),
}
orders = st.sampled_from(list(WordOrder))


@st.composite
def typed_values(draw):
    dtype = draw(st.sampled_from([t for t in DataType if t is not DataType.BOOL]))
    if dtype is DataType.FLOAT32:
        value = draw(st.floats(width=32, allow_nan=False))
    elif dtype is DataType.FLOAT64:
        value = draw(st.floats(allow_nan=False))
    else:
        low, high = INT_RANGES[dtype]
        value = draw(st.integers(low, high))
    return dtype, value


@given(typed_values(), orders)
def test_encode_then_decode_gives_the_value_back(tv, order):
    dtype, value = tv
    regs = encode_raw(value, dtype, order)
    assert len(regs) == dtype.words
    assert all(0 <= r <= 0xFFFF for r in regs)
    back = decode_raw(regs, dtype, order)
    assert back == value
    if dtype.is_float:
        assert math.copysign(1, back) == math.copysign(1, value)


@given(st.floats(width=32, allow_nan=False, allow_infinity=False), orders)
def test_float32_readings_are_short_but_the_same_float32(value, order):
    entry = RegisterEntry("v", Table.HOLDING, 0, DataType.FLOAT32, order)
    out = decode_entry(entry, encode_raw(value, DataType.FLOAT32, order))["v"]
    assert struct.pack(">f", out) == struct.pack(">f", value)
    assert len(repr(out)) <= max(len(repr(value)), 16)


def test_float32_reading_of_a_typical_value_is_short():
    entry = RegisterEntry("v", Table.HOLDING, 0, DataType.FLOAT32)
    assert decode_entry(entry, encode_raw(14.251256, DataType.FLOAT32))["v"] == 14.251256


@given(st.floats(width=32, allow_nan=False), orders)
def test_float32_orders_match_the_byte_layout_gateways_document(value, order):
    a, b, c, d = struct.pack(">f", value)
    expected = {
        WordOrder.ABCD: [a << 8 | b, c << 8 | d],
        WordOrder.CDAB: [c << 8 | d, a << 8 | b],
        WordOrder.BADC: [b << 8 | a, d << 8 | c],
        WordOrder.DCBA: [d << 8 | c, b << 8 | a],
    }[order]
    assert encode_raw(value, DataType.FLOAT32, order) == expected


@given(typed_values())
def test_agrees_with_pymodbus_converter_for_the_orders_it_knows(tv):
    # pymodbus only knows word order big (ABCD) / little (CDAB); a second implementation
    # agreeing on those two is a cross-check of ours.
    dtype, value = tv
    pm_type = getattr(ModbusTcpClient.DATATYPE, dtype.name)
    for order, word_order in ((WordOrder.ABCD, "big"), (WordOrder.CDAB, "little")):
        regs = encode_raw(value, dtype, order)
        assert regs == ModbusTcpClient.convert_to_registers(value, pm_type, word_order=word_order)
        assert ModbusTcpClient.convert_from_registers(regs, pm_type, word_order=word_order) == value


@given(st.floats(width=32, allow_nan=False, allow_infinity=False), orders, orders)
def test_the_wrong_order_only_agrees_when_the_bytes_allow_it(value, written, read):
    regs = encode_raw(value, DataType.FLOAT32, written)
    if written == read:
        assert decode_raw(regs, DataType.FLOAT32, read) == value


def test_sixteen_bit_values_only_see_the_byte_swap():
    assert encode_raw(0x1234, DataType.UINT16, WordOrder.ABCD) == [0x1234]
    assert encode_raw(0x1234, DataType.UINT16, WordOrder.CDAB) == [0x1234]
    assert encode_raw(0x1234, DataType.UINT16, WordOrder.BADC) == [0x3412]
    assert encode_raw(0x1234, DataType.UINT16, WordOrder.DCBA) == [0x3412]


def test_known_float_in_all_orders():
    # 12.5 = 0x41480000: the example every gateway manual uses.
    assert encode_raw(12.5, DataType.FLOAT32, WordOrder.ABCD) == [0x4148, 0x0000]
    assert encode_raw(12.5, DataType.FLOAT32, WordOrder.CDAB) == [0x0000, 0x4148]
    assert encode_raw(12.5, DataType.FLOAT32, WordOrder.BADC) == [0x4841, 0x0000]
    assert encode_raw(12.5, DataType.FLOAT32, WordOrder.DCBA) == [0x0000, 0x4841]
    table = decode_all_orders([0x0000, 0x4148])
    assert table[WordOrder.CDAB][DataType.FLOAT32] == 12.5
    assert plausible_float(table[WordOrder.CDAB][DataType.FLOAT32])
    assert not plausible_float(table[WordOrder.ABCD][DataType.FLOAT32])  # a denormal


@given(orders, st.sampled_from([float("nan"), float("inf"), float("-inf")]), st.sampled_from(["f32", "f64"]))
def test_nan_and_inf_are_bad_values_never_numbers(order, bad, width):
    dtype = DataType.FLOAT32 if width == "f32" else DataType.FLOAT64
    entry = RegisterEntry("flow_rate", Table.HOLDING, 0, dtype, order)
    with pytest.raises(BadValue):
        decode_entry(entry, encode_raw(bad, dtype, order))


def test_scaling_that_overflows_is_a_bad_value():
    entry = RegisterEntry("x", Table.HOLDING, 0, DataType.FLOAT32, scale=1e300)
    with pytest.raises(BadValue):
        decode_entry(entry, encode_raw(3.0e38, DataType.FLOAT32))


@given(st.integers(-(2**15), 2**15 - 1), st.floats(-1e6, 1e6), st.floats(-1e6, 1e6))
def test_scale_and_offset(raw, scale, offset):
    assume(scale != 1.0 or offset != 0.0)
    entry = RegisterEntry("level", Table.INPUT, 7, DataType.INT16, scale=scale, offset=offset)
    assert decode_entry(entry, encode_raw(raw, DataType.INT16)) == {"level": raw * scale + offset}


def test_unscaled_integers_stay_integers():
    entry = RegisterEntry("count", Table.HOLDING, 0, DataType.UINT32, WordOrder.CDAB)
    out = decode_entry(entry, encode_raw(70000, DataType.UINT32, WordOrder.CDAB))
    assert out == {"count": 70000} and isinstance(out["count"], int)


@given(st.integers(0, 0xFFFF), orders)
def test_named_bits_follow_the_decoded_word(word, order):
    entry = RegisterEntry("status", Table.HOLDING, 10, DataType.UINT16, order, bits=nivus.STATUS_BITS)
    out = decode_entry(entry, encode_raw(word, DataType.UINT16, order))
    assert out["status"] == word
    for position, name in nivus.STATUS_BITS:
        assert out[name] is bool(word >> position & 1)


def test_signed_status_word_keeps_bit_15():
    entry = RegisterEntry("s", Table.HOLDING, 0, DataType.INT16, bits=((15, "top"), (0, "low")))
    assert decode_entry(entry, [0x8001]) == {"s": -32767, "top": True, "low": True}


def test_bits_only_entry():
    entry = RegisterEntry("s", Table.INPUT, 0, DataType.UINT16, bits=((1, "b1"),), emit_value=False)
    assert decode_entry(entry, [2]) == {"b1": True}


def test_bool_entries_from_coils():
    entry = RegisterEntry("pump", Table.COIL, 3, DataType.BOOL)
    assert decode_entry(entry, [True]) == {"pump": True}
    with pytest.raises(ValueError):
        RegisterEntry("pump", Table.COIL, 3, DataType.UINT16)
    with pytest.raises(ValueError):
        RegisterEntry("x", Table.HOLDING, 3, DataType.BOOL)


def test_decode_block_skips_bad_entries_and_keeps_good_ones():
    entries = nivus.register_map(order=WordOrder.CDAB)
    (block,) = plan_reads(entries)
    data = [0] * block.count
    data[0:2] = encode_raw(1.5, DataType.FLOAT32, WordOrder.CDAB)
    data[2:4] = encode_raw(float("nan"), DataType.FLOAT32, WordOrder.CDAB)
    data[4:6] = encode_raw(17.25, DataType.FLOAT32, WordOrder.CDAB)
    data[10] = 0b1000_0000_0000_0001
    readings, errors = decode_block(block, data)
    assert readings["flow_rate"] == 1.5
    assert "totalizer" not in readings
    assert readings["temperature"] == 17.25
    assert readings["status"] == 0x8001
    assert readings["status_sensor_error"] is True and readings["status_system_error"] is True
    assert readings["status_level_error"] is False
    assert len(errors) == 1 and "totalizer" in errors[0] and "NaN" in errors[0]


def test_decode_block_short_response():
    block = ReadBlock(Table.HOLDING, 0, 4, (RegisterEntry("a", Table.HOLDING, 0, DataType.FLOAT64),))
    readings, errors = decode_block(block, [1, 2])
    assert readings == {} and "short response" in errors[0]


# ---- addresses ---------------------------------------------------------------------------


def test_address_bases_and_modicon_notation():
    assert parse_address(0, 0, Table.HOLDING) == (Table.HOLDING, 0)
    assert parse_address(1, 1, Table.HOLDING) == (Table.HOLDING, 0)
    assert parse_address(11, 1, Table.INPUT) == (Table.INPUT, 10)
    assert parse_address("40001", 0, None) == (Table.HOLDING, 0)
    assert parse_address("40011", 1, Table.HOLDING) == (Table.HOLDING, 10)  # base ignored
    assert parse_address("30005", 0, None) == (Table.INPUT, 4)
    assert parse_address("00001", 0, None) == (Table.COIL, 0)
    assert parse_address("10002", 0, None) == (Table.DISCRETE, 1)
    assert parse_address("465536", 0, None) == (Table.HOLDING, 65535)
    for bad in [
        (0, 1, Table.HOLDING),
        ("40001", 0, Table.INPUT),
        ("123", 0, None),
        ("40000", 0, None),
        (5, 2, Table.HOLDING),
        (65536, 0, Table.HOLDING),
        (3, 0, None),
        ("20001", 0, None),
        (True, 0, Table.HOLDING),
    ]:
        with pytest.raises((ValueError, TypeError)):
            parse_address(*bad)


# ---- planning ----------------------------------------------------------------------------


def test_nivus_map_is_one_request_by_default_and_two_without_gaps():
    entries = nivus.register_map()
    (block,) = plan_reads(entries)
    assert (block.table, block.address, block.count) == (Table.HOLDING, 0, 11)
    assert block.has_gaps
    blocks = plan_reads(entries, max_gap=0)
    assert [(b.address, b.count) for b in blocks] == [(0, 6), (10, 1)]
    assert not any(b.has_gaps for b in blocks)


def test_tables_never_mix_and_limits_hold():
    entries = [RegisterEntry(f"h{i}", Table.HOLDING, i * 2, DataType.FLOAT32) for i in range(100)]
    entries += [RegisterEntry(f"i{i}", Table.INPUT, i, DataType.UINT16) for i in range(10)]
    entries += [RegisterEntry(f"c{i}", Table.COIL, i * 3, DataType.BOOL) for i in range(1000)]
    blocks = plan_reads(entries)
    holding = [b for b in blocks if b.table is Table.HOLDING]
    assert [(b.address, b.count) for b in holding] == [(0, 124), (124, 76)]  # 32-bit values never split
    assert [(b.address, b.count) for b in blocks if b.table is Table.INPUT] == [(0, 10)]
    coils = [b for b in blocks if b.table is Table.COIL]
    assert [(b.address, b.count) for b in coils] == [(0, 1999), (2001, 997)]


@st.composite
def register_maps(draw):
    entries = []
    for names in range(1, draw(st.integers(1, 40)) + 1):
        table = draw(st.sampled_from(list(Table)))
        dtype = (
            DataType.BOOL if table.is_bit else draw(st.sampled_from([t for t in DataType if t is not DataType.BOOL]))
        )
        address = draw(st.integers(0, 0xFFFF - dtype.words + 1))
        entries.append(RegisterEntry(f"m{names}", table, address, dtype))
    return entries


@settings(max_examples=200)
@given(register_maps(), st.integers(0, 20), st.integers(0, 100))
def test_plan_covers_every_entry_exactly_once_within_limits(entries, gap, bit_gap):
    blocks = plan_reads(entries, max_gap=gap, max_bit_gap=bit_gap)
    seen = [e for b in blocks for e in b.entries]
    assert sorted(e.name for e in seen) == sorted(e.name for e in entries)
    for b in blocks:
        assert 1 <= b.count <= (MAX_BITS_PER_READ if b.table.is_bit else MAX_REGISTERS_PER_READ)
        for e in b.entries:
            assert e.table is b.table and b.address <= e.address and e.end <= b.end
    # Minimality of the greedy merge: two neighbouring blocks of a table could not
    # have been one request (too far apart or too long together).
    for left, right in itertools.pairwise(blocks):
        if left.table is right.table:
            limit = MAX_BITS_PER_READ if left.table.is_bit else MAX_REGISTERS_PER_READ
            allowed = bit_gap if left.table.is_bit else gap
            assert right.address > left.end + allowed or max(left.end, right.end) - left.address > limit


@given(register_maps())
def test_plan_then_decode_round_trip(entries):
    # Values written where the plan says must come back through decode_block.
    memory: dict[tuple[Table, int], int | bool] = {}
    expected: dict[str, object] = {}
    for i, entry in enumerate(entries):
        if entry.dtype is DataType.BOOL:
            words: list = [bool(i % 2)]
        else:
            low, high = INT_RANGES.get(entry.dtype, (0, 1000))
            value = float(i) if entry.dtype.is_float else min(max(i, low), high)
            words = encode_raw(value, entry.dtype, entry.order)
        for offset, w in enumerate(words):
            memory[(entry.table, entry.address + offset)] = w
    for entry in entries:  # later overlapping writes win; read back what is there
        span = [memory[(entry.table, entry.address + k)] for k in range(entry.count)]
        if entry.dtype is DataType.BOOL:
            expected[entry.name] = span[0]
        else:
            raw = decode_raw(span, entry.dtype, entry.order)
            expected[entry.name] = shortest_float32(raw) if entry.dtype is DataType.FLOAT32 else raw
    for block in plan_reads(entries):
        data = [
            memory.get((block.table, a), False if block.table.is_bit else 0) for a in range(block.address, block.end)
        ]
        readings, errors = decode_block(block, data)
        assert not errors
        for name, value in readings.items():
            assert value == expected[name]
