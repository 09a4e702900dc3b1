"""The doors of issue 15 wired into an app: Idempotency-Key for every HTTP ingest route, the
InfluxDB line-protocol routes (docs/doors.md). One call from create_app()."""

from __future__ import annotations

import atexit
from collections.abc import Callable

from flask import Flask
from psycopg_pool import ConnectionPool

from backend.api import idempotent, line_protocol
from backend.config import Config
from backend.ingest.device_tags import DeviceTags
from backend.ingest.idempotency import IdempotencyStore


def init_doors(app: Flask, cfg: Config, pool: ConnectionPool, available: Callable[[], bool]) -> IdempotencyStore:
    """`available`: false while the write path knows the database is down (then keyed requests get 503)."""
    # The lease outlives any request (ACK_TIMEOUT bounds one), so only a dead owner's claim is taken over.
    store = IdempotencyStore(pool, available, ttl_s=cfg.idempotency_ttl_s, wait_s=cfg.idempotency_wait_s,
                             lease_s=max(60.0, 2 * cfg.ack_timeout + 10))
    idempotent.init_app(app, store)
    line_protocol.init_app(app, DeviceTags(pool))
    store.start()
    atexit.register(store.close)
    return store
