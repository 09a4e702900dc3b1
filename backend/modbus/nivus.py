"""Built-in register map for the Nivus flow transmitter.

Layout as given for this deployment (protocol addresses, i.e. 0-based):
  0-1   flow_rate    float32
  2-3   totalizer    float32
  4-5   temperature  float32
  10    status       uint16 with named bits

The status bit assignment below is this project's assumption, not taken from a Nivus
manual; check it against the transmitter's Modbus documentation and override it in
the config (a `[[devices.registers]]` entry named "status" replaces this one).
The table and word order are parameters because they depend on how the transmitter
is configured; run `python -m backend.modbus probe` to find the order.
"""

from __future__ import annotations

from .registers import DataType, RegisterEntry, Table, WordOrder

NAME = "nivus"

STATUS_BITS: tuple[tuple[int, str], ...] = (
    (0, "status_sensor_error"),
    (1, "status_level_error"),
    (2, "status_velocity_error"),
    (3, "status_temperature_error"),
    (4, "status_totalizer_overflow"),
    (7, "status_maintenance"),
    (15, "status_system_error"),
)


def register_map(table: Table = Table.HOLDING, order: WordOrder = WordOrder.ABCD) -> list[RegisterEntry]:
    """The Nivus map with every float in `order` from `table`."""
    return [
        RegisterEntry("flow_rate", table, 0, DataType.FLOAT32, order),
        RegisterEntry("totalizer", table, 2, DataType.FLOAT32, order),
        RegisterEntry("temperature", table, 4, DataType.FLOAT32, order),
        # The status word only sees the byte half of the order (see WordOrder).
        RegisterEntry("status", table, 10, DataType.UINT16, order, bits=STATUS_BITS),
    ]


BUILTIN_MAPS = {NAME: register_map}
