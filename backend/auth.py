"""API-key authentication and scopes for every endpoint.

Keys arrive as `Authorization: Bearer <key>` or `X-API-Key: <key>`. Each worker keeps a
cache of every key (by SHA-256 of the key) that a background thread refreshes once a
second from the rows changed since its last look, so a revoked key is refused by every
worker within about a second, and a request never waits on the database to be
authenticated (a key the cache has not seen yet costs one indexed lookup). `ADMIN_API_KEY`
from the environment is an admin key that needs no database at all.

Scopes: `ingest` (write readings), `read` (every GET), `admin` (everything, plus flush,
keys, device metadata, alert rules). `/health` is public. An endpoint names its scope
with `@requires(...)` or in `ENDPOINT_SCOPES`; anything else is `read` for GET/HEAD and
`admin` for other methods, so a new write endpoint is closed until someone opens it.
"""

from __future__ import annotations

import hmac
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from flask import Flask, Response, current_app, g, request
from psycopg_pool import ConnectionPool, PoolClosed

from .api.responses import error_response
from .keys import hash_key
from .ratelimit import RateLimits

log = logging.getLogger(__name__)

PUBLIC = "public"
# Endpoints of blueprints this module does not own; views of the fleet blueprints use @requires.
ENDPOINT_SCOPES: dict[str, str] = {
    "health.health": PUBLIC,
    "telemetry.parse": "ingest",
    "telemetry.ingest_plain": "ingest",
    "telemetry.flush": "admin",
}
UNAUTHORIZED = "missing, unknown, expired or revoked API key"
MAX_KEY_LEN = 256
NEGATIVE_CACHE_MAX = 50_000
TOUCH_EVERY_S = 60.0  # last_used_at is written at most this often per key and worker


def requires(scope: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Mark a view with the scope it needs (`ingest`, `read`, `admin` or PUBLIC)."""

    def mark(view: Callable[..., Any]) -> Callable[..., Any]:
        view.required_scope = scope  # type: ignore[attr-defined]
        return view

    return mark


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


class AuthUnavailable(RuntimeError):
    """The key is not cached and the database cannot be asked right now."""


class KeyStore:
    """Per-worker key cache, refreshed from PostgreSQL by one background thread."""

    def __init__(self, pool: ConnectionPool, admin_key: str = "", sync_interval: float = 1.0,
                 full_reload_s: float = 60.0, available: Callable[[], bool] | None = None) -> None:
        self.pool = pool
        # False while the write path knows the database is down: answer at once, do not wait.
        self.available = available or (lambda: True)
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
        self.synced = threading.Event()  # set after the first successful sync

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

    def stop(self) -> None:
        self._stop.set()

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
        self.synced.set()

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


# ---- Flask wiring ------------------------------------------------------------------------


def presented_key(req: Any = None) -> str | None:
    req = req or request
    header = req.headers.get("Authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    key = req.headers.get("X-API-Key")
    return key.strip() if key and key.strip() else None


def current_identity() -> tuple[Identity | None, str]:
    """(identity, status) for this request; status: ok, missing, invalid, unavailable.

    Computed once per request.
    """
    cached = g.get("_fleet_identity")
    if cached is not None:
        return cached
    store: KeyStore = current_app.extensions["fleet_keys"]
    raw = presented_key()
    if raw is None:
        result: tuple[Identity | None, str] = (None, "missing")
    elif len(raw) > MAX_KEY_LEN:
        result = (None, "invalid")
    else:
        try:
            ident = store.lookup(raw)
        except AuthUnavailable:
            result = (None, "unavailable")
        else:
            if ident is None or not ident.usable(datetime.now(UTC)):
                result = (None, "invalid")
            else:
                result = (ident, "ok")
    g._fleet_identity = result
    return result


def required_scope(app: Flask, endpoint: str, method: str) -> str:
    view = app.view_functions.get(endpoint)
    scope = getattr(view, "required_scope", None) or ENDPOINT_SCOPES.get(endpoint)
    if scope:
        return scope
    return "read" if method in ("GET", "HEAD") else "admin"


def install_auth(app: Flask, svc: Any, limits: RateLimits | None = None) -> KeyStore:
    """Check every request's key and scope, and count it against its rate limit.

    Order: a request with a valid key is counted against that key's budget (ADMIN_API_KEY:
    not counted), then its scope is checked; a request without a valid key is counted
    against its IP address's budget, then refused (401) unless the endpoint is public.
    """
    cfg = svc.config
    store = KeyStore(svc.pool, cfg.admin_api_key, available=getattr(svc.buffer, "sink_available", None))
    app.extensions["fleet_keys"] = store
    if cfg.admin_api_key and len(cfg.admin_api_key) < 32 and not cfg.testing:
        log.warning("ADMIN_API_KEY is shorter than 32 characters; use `python -m backend keys create`"
                    " style keys (256 random bits)")
    if cfg.auth_required and not cfg.admin_api_key:
        log.info("no ADMIN_API_KEY: create keys with `python -m backend keys create`")
    if limits is not None and not limits.enabled:
        limits = None

    @app.before_request
    def _authenticate() -> Response | None:
        if request.method == "OPTIONS":
            return None  # CORS preflight
        endpoint = request.endpoint
        scope = PUBLIC if endpoint is None else required_scope(app, endpoint, request.method)
        if scope == PUBLIC or not cfg.auth_required:
            # Public endpoints, 404/405, or auth switched off: counted per IP only.
            if scope != PUBLIC:
                g._fleet_identity = (OPEN, "ok")
            return limits.check_ip(request.remote_addr) if limits is not None else None
        ident, status = current_identity()
        if ident is None:
            limited = limits.check_ip(request.remote_addr) if limits is not None else None
            if limited is not None:
                return limited
            if status == "unavailable":
                return error_response(503, "cannot check the API key right now (database unreachable);"
                                      " retry later", retry_after=5)
            resp = error_response(401, UNAUTHORIZED)
            resp.headers["WWW-Authenticate"] = 'Bearer realm="telemetry"'
            return resp
        if limits is not None and not ident.master:
            limited = limits.check_key(ident.key_id)
            if limited is not None:
                return limited
        if not ident.allows(scope):
            return error_response(403, f"this API key does not have the {scope!r} scope")
        store.touch(ident)
        return None

    if cfg.testing:
        pid = str(os.getpid())

        @app.after_request
        def _served_by(resp: Response) -> Response:
            resp.headers["X-Served-By"] = pid  # lets multi-worker tests see which worker answered
            return resp

    svc.extras["device_guard"] = device_guard_for_request
    store.start()
    return store


def device_guard_for_request() -> Callable[[list], tuple[list, str | None]] | None:
    """The ingest hook: a key bound to devices may only write those devices.

    A request with any message for another device is refused whole (403, nothing stored):
    a gateway that sends for a device it does not own is misconfigured, and storing half
    of its batch would hide that.
    """
    ident, _status = g.get("_fleet_identity") or (None, "")
    if ident is None or ident.devices is None:
        return None
    allowed = ident.devices

    def guard(messages: list) -> tuple[list, str | None]:
        bad = sorted({r.device_id for m in messages for r in m.readings if r.device_id not in allowed})
        if bad:
            shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
            return [], f"this API key may not write device {shown}; nothing was stored"
        return messages, None

    return guard
