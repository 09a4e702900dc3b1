"""The per-worker cache of API keys, and the identity a key stands for.

Each worker keeps a cache of every key (by SHA-256 of the key) that a background thread
refreshes once a second from the rows changed since its last look, so a revoked key is
refused by every worker within about a second, and a request never waits on the database
to be authenticated (a key the cache has not seen yet costs one indexed lookup).
`ADMIN_API_KEY` from the environment is an admin key that needs no database at all.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psycopg
from psycopg_pool import ConnectionPool, PoolClosed

from backend.fleet.auth.keys import hash_key

log = logging.getLogger(__name__)

NEGATIVE_CACHE_MAX = 50_000
TOUCH_EVERY_S = 60.0  # last_used_at is written at most this often per key and worker


@dataclass(frozen=True, slots=True)
class Identity:
    key_id: str
    name: str
    scopes: frozenset[str]
    devices: frozenset[str] | None = None
    expires_at: datetime | None = None
    revoked: bool = False
    master: bool = False  # ADMIN_API_KEY from the environment

    def allows(self, scope: str) -> bool:
        return "admin" in self.scopes or scope in self.scopes

    def usable(self, now: datetime) -> bool:
        return not self.revoked and (self.expires_at is None or self.expires_at > now)


MASTER = Identity("env-admin", "ADMIN_API_KEY", frozenset({"admin"}), master=True)
OPEN = Identity("auth-disabled", "AUTH_REQUIRED=false", frozenset({"admin"}), master=True)
ANONYMOUS_KEY_ID = "anonymous"


def anonymous_identity(devices: list[str]) -> Identity:
    """Who a keyless writer is under ANONYMOUS_DEVICES: ingest only, for those devices only."""
    return Identity(ANONYMOUS_KEY_ID, "ANONYMOUS_DEVICES", frozenset({"ingest"}), frozenset(devices))


class AuthUnavailable(RuntimeError):
    """The key is not cached and the database cannot be asked right now."""


class KeyStore:
    """Per-worker key cache, refreshed from PostgreSQL by one background thread."""

    def __init__(self, pool: ConnectionPool, available: Callable[[], bool], admin_key: str = "",
                 sync_interval: float = 1.0, full_reload_s: float = 60.0) -> None:
        self.pool = pool
        # False while the write path knows the database is down: answer at once, do not wait.
        self.available = available
        self.sync_interval = sync_interval
        self.full_reload_s = full_reload_s
        self._admin_hash = hash_key(admin_key) if admin_key else None
        self._by_hash: dict[str, Identity | None] = {}
        self._negatives = 0
        self._since: datetime | None = None
        self._last_full = 0.0
        self._touched: dict[str, float] = {}
        self._pending_touch: dict[str, datetime] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- request side ----------------------------------------------------------------

    def lookup(self, raw: str) -> Identity | None:
        """The identity for a presented key, or None if it is unknown (not checked for expiry)."""
        digest = hash_key(raw)
        if self._admin_hash is not None and hmac.compare_digest(digest, self._admin_hash):
            return MASTER
        try:
            ident = self._by_hash[digest]
        except KeyError:
            ident = self._fetch(digest)
        return ident

    def touch(self, ident: Identity) -> None:
        if ident.master:
            return
        now = time.monotonic()
        if now - self._touched.get(ident.key_id, -TOUCH_EVERY_S) >= TOUCH_EVERY_S:
            self._touched[ident.key_id] = now
            self._pending_touch[ident.key_id] = datetime.now(UTC)

    def _fetch(self, digest: str) -> Identity | None:
        if not self.available():
            raise AuthUnavailable("database known to be unreachable")
        try:
            with self.pool.connection(timeout=2.0) as conn:
                row = conn.execute(
                    "SELECT id, name, key_hash, scopes, devices, expires_at, revoked_at"
                    " FROM api_keys WHERE key_hash = %s", (digest,)
                ).fetchone()
        except Exception as exc:  # noqa: BLE001 - closed pool, timeout, database down: all unavailable
            raise AuthUnavailable(type(exc).__name__) from exc
        ident = _identity(row) if row else None
        # Constant-time comparison of what the index found (defence in depth).
        if row is not None and not hmac.compare_digest(row[2], digest):
            ident = None
        with self._lock:
            if ident is None:
                if self._negatives >= NEGATIVE_CACHE_MAX:
                    self._by_hash = {h: i for h, i in self._by_hash.items() if i is not None}
                    self._negatives = 0
                self._negatives += 1
            self._by_hash[digest] = ident
        return ident

    # ---- background side ---------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="api-key-sync", daemon=True)
            self._thread.start()

    def close(self, timeout: float = 2.0) -> None:
        """Stop the sync thread (the cache stays readable; nothing is written any more)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self.available():  # not while the write path knows the database is down
                    self.sync()
            except PoolClosed:
                return
            except Exception as exc:  # noqa: BLE001 - keep the cache, try again next tick
                log.debug("api key sync failed: %s", exc)
            if self._stop.wait(self.sync_interval):
                return

    def sync(self) -> None:
        """Pull the keys changed since the last sync (all of them now and then) into the cache."""
        full = self._since is None or time.monotonic() - self._last_full >= self.full_reload_s
        with self.pool.connection(timeout=5.0) as conn:
            if full:
                rows = conn.execute(
                    "SELECT id, name, key_hash, scopes, devices, expires_at, revoked_at, updated_at"
                    " FROM api_keys").fetchall()
            else:
                # Overlap by a few seconds: a row stamped just before our last look may have
                # committed just after it.
                rows = conn.execute(
                    "SELECT id, name, key_hash, scopes, devices, expires_at, revoked_at, updated_at"
                    " FROM api_keys WHERE updated_at > %s", (self._since - timedelta(seconds=5),)
                ).fetchall()
            self._flush_touches(conn)
        newest = self._since
        fresh = {r[2]: _identity(r) for r in rows}
        with self._lock:
            if full:
                self._by_hash = fresh  # also forgets unknown keys and deleted rows
                self._negatives = 0
                self._last_full = time.monotonic()
            else:
                self._by_hash.update(fresh)
        for r in rows:
            if newest is None or r[7] > newest:
                newest = r[7]
        self._since = newest or datetime(2000, 1, 1, tzinfo=UTC)

    def _flush_touches(self, conn: psycopg.Connection) -> None:
        if not self._pending_touch:
            return
        pending, self._pending_touch = self._pending_touch, {}
        conn.execute(
            "UPDATE api_keys k SET last_used_at = v.t"
            " FROM unnest(%s::text[], %s::timestamptz[]) AS v(id, t)"
            " WHERE k.id = v.id AND (k.last_used_at IS NULL OR k.last_used_at < v.t)",
            (list(pending), list(pending.values())),
        )


def _identity(row: tuple) -> Identity:
    key_id, name, _hash, scopes, devices, expires_at, revoked_at = row[:7]
    return Identity(key_id, name, frozenset(scopes), frozenset(devices) if devices is not None else None,
                    expires_at, revoked_at is not None)
