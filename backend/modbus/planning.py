"""Which Modbus reads cover a device's registers: neighbouring entries in one request, within
the protocol's limits (125 registers, 2,000 bits) and a small gap."""

from __future__ import annotations

from collections.abc import Iterable

from .registers import MAX_BITS_PER_READ, MAX_REGISTERS_PER_READ, ReadBlock, RegisterEntry, Table

# ---- request planning --------------------------------------------------------------------


def plan_reads(
    entries: Iterable[RegisterEntry],
    *,
    max_gap: int = 8,
    max_bit_gap: int = 64,
    max_registers: int = MAX_REGISTERS_PER_READ,
    max_bits: int = MAX_BITS_PER_READ,
) -> list[ReadBlock]:
    """Group entries into as few reads as possible.

    Neighbours are merged when the hole between them is at most `max_gap` registers
    (`max_bit_gap` for coils/discrete inputs) and the request stays within the
    protocol limit. Reading a few unused registers is cheaper than another RS485
    round trip, but some devices answer "illegal address" for unmapped holes, which
    is why the poller re-plans with max_gap=0 when that happens.
    """
    if max_gap < 0 or max_bit_gap < 0:
        raise ValueError("gaps must be >= 0")
    if not 1 <= max_registers <= MAX_REGISTERS_PER_READ or not 1 <= max_bits <= MAX_BITS_PER_READ:
        raise ValueError("per-request limits must be within the Modbus protocol limits")
    by_table: dict[Table, list[RegisterEntry]] = {}
    for entry in entries:
        by_table.setdefault(entry.table, []).append(entry)
    blocks: list[ReadBlock] = []
    for table in Table:  # fixed table order keeps plans deterministic
        items = sorted(by_table.get(table, []), key=lambda e: (e.address, -e.count, e.name))
        if not items:
            continue
        limit = max_bits if table.is_bit else max_registers
        gap = max_bit_gap if table.is_bit else max_gap
        start, end = items[0].address, items[0].end
        members = [items[0]]
        for entry in items[1:]:
            new_end = max(end, entry.end)
            if entry.address <= end + gap and new_end - start <= limit:
                end = new_end
                members.append(entry)
                continue
            blocks.append(ReadBlock(table, start, end - start, tuple(members)))
            start, end, members = entry.address, entry.end, [entry]
        blocks.append(ReadBlock(table, start, end - start, tuple(members)))
    return blocks
