"""Devices: online status, latest value of every metric, and admin-edited metadata.

`devices` rows are created and their last_seen kept by the write path (0001); the latest
values come from `device_latest`, which the write path keeps (migrations/0011),
so listing the fleet is one index scan per device, not a search through the readings.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson
from psycopg import sql
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

TEXT_FIELDS = {"name": 200, "location": 200, "description": 2000, "device_type": 100}
ALIASES = {"device_name": "name"}  # FluxIO's name for the same column
MAX_METADATA_BYTES = 16 * 1024


class DeviceError(ValueError):
    """A request the client got wrong; the message says what."""


def _iso(ts: datetime | None) -> str | None:
    return ts.isoformat().replace("+00:00", "Z") if ts else None


def _value(v: float | None, t: str | None) -> Any:
    if t is not None:
        return t
    if v is not None and v.is_integer() and abs(v) < 2**53:
        return int(v)
    return v


_SELECT = """
SELECT d.device_id, d.name, d.location, d.description, d.device_type, d.metadata,
       d.first_seen, d.last_seen, d.updated_at,
       d.last_seen > now() - make_interval(secs => %(offline)s) AS online,
       extract(epoch FROM now() - d.last_seen)::float8 AS age_s,
       l.metrics, l.vals, l.texts, l.tss
FROM devices d
LEFT JOIN LATERAL (
    SELECT array_agg(metric ORDER BY metric) AS metrics, array_agg(value ORDER BY metric) AS vals,
           array_agg(value_text ORDER BY metric) AS texts, array_agg(ts ORDER BY metric) AS tss
    FROM device_latest dl WHERE dl.device_id = d.device_id
) l ON true
"""


def _device(row: tuple) -> dict[str, Any]:
    (device_id, name, location, description, device_type, metadata, first_seen, last_seen, updated_at,
     online, age_s, metrics, vals, texts, tss) = row
    latest: dict[str, Any] = {}
    latest_data: dict[str, Any] = {"device_id": device_id}
    newest = None
    for m, v, t, ts in zip(metrics or [], vals or [], texts or [], tss or [], strict=True):
        value = _value(v, t)
        latest[m] = {"value": value, "ts": _iso(ts)}
        latest_data[m] = value
        newest = ts if newest is None or ts > newest else newest
    latest_data["created_at"] = _iso(newest)
    return {
        "device_id": device_id,
        "name": name,
        "device_name": name or device_id,
        "location": location,
        "description": description,
        "device_type": device_type,
        "metadata": metadata or {},
        "status": "online" if online else "offline",
        "online": bool(online),
        "last_seen": _iso(last_seen),
        "seconds_since_seen": round(age_s, 3) if age_s is not None else None,
        "first_seen": _iso(first_seen),
        "created_at": _iso(first_seen),
        "updated_at": _iso(updated_at),
        "latest": latest,
        # FluxIO's dashboard reads the newest reading as one flat record.
        "latest_data": latest_data if latest else None,
    }


def list_devices(pool: ConnectionPool, offline_after_s: int, status: str | None = None,
                 limit: int = 10_000, offset: int = 0) -> list[dict[str, Any]]:
    where = ""
    if status == "online":
        where = " WHERE d.last_seen > now() - make_interval(secs => %(offline)s)"
    elif status == "offline":
        where = " WHERE d.last_seen <= now() - make_interval(secs => %(offline)s)"
    elif status not in (None, ""):
        raise DeviceError("status: online or offline")
    stmt = _SELECT + where + " ORDER BY d.device_id LIMIT %(limit)s OFFSET %(offset)s"
    with pool.connection() as conn:
        rows = conn.execute(stmt, {"offline": offline_after_s, "limit": limit, "offset": offset}).fetchall()
    return [_device(r) for r in rows]


def get_device(pool: ConnectionPool, device_id: str, offline_after_s: int) -> dict[str, Any] | None:
    with pool.connection() as conn:
        row = conn.execute(_SELECT + " WHERE d.device_id = %(id)s",
                           {"offline": offline_after_s, "id": device_id}).fetchone()
    return _device(row) if row else None


def patch_device(pool: ConnectionPool, device_id: str, body: object, offline_after_s: int) -> dict[str, Any] | None:
    """Update name/location/description/device_type and merge metadata (a null value removes a key)."""
    if not isinstance(body, dict) or not body:
        raise DeviceError("body: a JSON object with name, location, description, device_type or metadata")
    sets: list[sql.Composable] = []
    params: list[Any] = []
    seen: set[str] = set()
    for key, value in body.items():
        column = ALIASES.get(key, key)
        if column in seen:
            raise DeviceError(f"{key}: given twice")
        seen.add(column)
        if column in TEXT_FIELDS:
            if value is not None and (not isinstance(value, str) or len(value) > TEXT_FIELDS[column]):
                raise DeviceError(f"{key}: a string of at most {TEXT_FIELDS[column]} characters, or null")
            sets.append(sql.SQL("{} = %s").format(sql.Identifier(column)))
            params.append(value)
        elif column == "metadata":
            if not isinstance(value, dict):
                raise DeviceError("metadata: a JSON object (merged into the stored one; null removes a key)")
            if len(orjson.dumps(value)) > MAX_METADATA_BYTES:
                raise DeviceError(f"metadata: more than {MAX_METADATA_BYTES} bytes")
            sets.append(sql.SQL("metadata = jsonb_strip_nulls(metadata || %s)"))
            params.append(Jsonb(value))
        else:
            raise DeviceError(f"{str(key)[:40]}: not editable (name, location, description, device_type, metadata)")
    sets.append(sql.SQL("updated_at = now()"))
    stmt = sql.SQL("UPDATE devices SET {} WHERE device_id = %s RETURNING device_id").format(sql.SQL(", ").join(sets))
    with pool.connection() as conn:
        row = conn.execute(stmt, [*params, device_id]).fetchone()
    if row is None:
        return None
    return get_device(pool, device_id, offline_after_s)


def summary(pool: ConnectionPool, offline_after_s: int) -> dict[str, Any]:
    with pool.connection() as conn:
        total, online = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE last_seen > now() - make_interval(secs => %s)) FROM devices",
            (offline_after_s,)).fetchone() or (0, 0)
        active, critical = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE severity = 'critical') FROM alerts WHERE NOT is_resolved"
        ).fetchone() or (0, 0)
    return {"total_devices": total, "online_devices": online, "offline_devices": total - online,
            "active_alerts": active, "critical_alerts": critical}
