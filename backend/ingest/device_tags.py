"""Tags a format carries about a device (line protocol's non-device tags), kept in its metadata.

Merged into `devices.metadata -> 'tags'` (beside what an admin edits through /api/devices),
after the readings are durable. Written only when a device's tags differ from what this
worker last wrote, so a gateway sending the same tags in every body costs nothing. The
tags are descriptive, not readings: when the write fails (database down, readings on the
spool, the device row not there yet), the next body with them tries again.
"""

from __future__ import annotations

import logging
import threading

import orjson
import psycopg
from psycopg_pool import ConnectionPool, PoolClosed

log = logging.getLogger(__name__)

_MERGE = """
UPDATE devices d
   SET metadata = jsonb_set(d.metadata, '{tags}', COALESCE(d.metadata -> 'tags', '{}'::jsonb) || x.tags),
       updated_at = now()
  FROM jsonb_each(%s::jsonb) AS x(device_id, tags)
 WHERE d.device_id = x.device_id
RETURNING d.device_id
"""


class DeviceTags:
    def __init__(self, pool: ConnectionPool, max_cached: int = 50_000) -> None:
        self.pool = pool
        self.max_cached = max_cached
        self._written: dict[str, dict[str, str]] = {}
        self._lock = threading.Lock()

    def record(self, metadata: dict[str, dict[str, str]]) -> int:
        """Merge each device's tags into its metadata; returns how many devices were written."""
        with self._lock:
            changed = {d: t for d, t in metadata.items() if self._written.get(d) != t}
        if not changed:
            return 0
        try:
            with self.pool.connection(timeout=2.0) as conn:
                done = [r[0] for r in conn.execute(_MERGE, (orjson.dumps(changed).decode(),)).fetchall()]
        except (psycopg.Error, PoolClosed, TimeoutError) as exc:
            log.warning("device tags not recorded (%d devices): %s", len(changed), exc)
            return 0
        with self._lock:
            if len(self._written) + len(done) > self.max_cached:
                self._written.clear()
            for d in done:
                self._written[d] = changed[d]
        return len(done)
