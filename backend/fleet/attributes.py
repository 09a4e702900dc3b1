"""Device attributes (ThingsBoard's client-side attributes) merged into `devices.metadata`.

ThingsBoard devices publish attributes (firmware version, model, ...) next to telemetry;
they describe the device, so they go where an admin's metadata goes (PATCH /api/devices),
merged key by key (a JSON null removes a key). A device not seen before gets its row.
"""

from __future__ import annotations

from typing import Any

from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from backend.fleet.devices import MAX_METADATA_BYTES, DeviceError


def merge_attributes(pool: ConnectionPool, device_id: str, attributes: dict[str, Any]) -> dict[str, Any]:
    """Merge `attributes` into the device's metadata; returns the metadata as stored."""
    removed = [k for k, v in attributes.items() if v is None]
    kept = {k: v for k, v in attributes.items() if v is not None}
    with pool.connection() as conn, conn.transaction():  # raising inside rolls the merge back
        row = conn.execute(
            "INSERT INTO devices AS d (device_id, metadata) VALUES (%(id)s, %(kept)s)"
            " ON CONFLICT (device_id) DO UPDATE SET metadata = (d.metadata || %(kept)s) - %(removed)s::text[],"
            " updated_at = now()"
            " RETURNING metadata, octet_length(metadata::text)",
            {"id": device_id, "kept": Jsonb(kept), "removed": removed}).fetchone()
        assert row is not None
        if row[1] > MAX_METADATA_BYTES:
            raise DeviceError(f"metadata would be over {MAX_METADATA_BYTES} bytes; nothing was changed")
    return row[0]
