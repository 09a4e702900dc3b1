"""API-key authentication and scopes for every endpoint: the Flask side of the key store.

Keys arrive as `Authorization: Bearer <key>` or `X-API-Key: <key>` and are looked up in the
worker's KeyStore (backend/fleet/auth/keystore.py).

Scopes: `ingest` (write readings), `read` (every GET), `admin` (everything, plus flush,
keys, device metadata, alert rules). `/health` is public. An endpoint names its scope
with `@requires(...)` or in `ENDPOINT_SCOPES`; anything else is `read` for GET/HEAD and
`admin` for other methods, so a new write endpoint is closed until someone opens it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from flask import Flask, Request, Response, g, request

from backend.api.responses import error_response
from backend.config import Config
from backend.fleet.auth.keystore import OPEN, AuthUnavailable, Identity, KeyStore, anonymous_identity
from backend.fleet.ratelimit import Decision, RateLimits

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
# InfluxDB 1.x clients send credentials as Basic auth or ?u=&p= (the key is the password);
# only these endpoints take them (backend/api/line_protocol.py), nowhere else.
V1_CREDENTIAL_ENDPOINTS = frozenset({"lineproto.write_v1", "lineproto.query_v1"})
# Seed 002's producer sends no key: with ANONYMOUS_DEVICES set, only this route lets it in,
# and only for those devices (the device guard; another device gets 401).
ANONYMOUS_ENDPOINTS = frozenset({"fluxio.seed002_ingest"})


def requires(scope: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Mark a view with the scope it needs (`ingest`, `read`, `admin` or PUBLIC)."""

    def mark(view: Callable[..., Any]) -> Callable[..., Any]:
        view.required_scope = scope  # type: ignore[attr-defined]
        return view

    return mark


def presented_key(req: Request) -> str | None:
    header = req.headers.get("Authorization")
    if header:
        scheme, _, value = header.partition(" ")
        # `Token`: InfluxDB 2.x clients and Telegraf's influxdb_v2 output.
        if scheme.lower() in ("bearer", "token") and value.strip():
            return value.strip()
        if scheme.lower() == "basic" and req.endpoint in V1_CREDENTIAL_ENDPOINTS and req.authorization:
            return (req.authorization.password or "").strip() or None
    key = req.headers.get("X-API-Key")
    if key and key.strip():
        return key.strip()
    if req.endpoint in V1_CREDENTIAL_ENDPOINTS:
        return (req.args.get("p") or "").strip() or None
    return None


def authenticate(store: KeyStore, req: Request) -> tuple[Identity | None, str]:
    """(identity, status) for a request; status: ok, missing, invalid, unavailable."""
    raw = presented_key(req)
    if raw is None:
        return None, "missing"
    if len(raw) > MAX_KEY_LEN:
        return None, "invalid"
    try:
        ident = store.lookup(raw)
    except AuthUnavailable:
        return None, "unavailable"
    if ident is None or not ident.usable(datetime.now(UTC)):
        return None, "invalid"
    return ident, "ok"


def request_identity() -> Identity | None:
    """The identity the auth hook admitted this request with (None on public endpoints)."""
    return g.get("fleet_identity")


def required_scope(app: Flask, endpoint: str, method: str) -> str:
    view = app.view_functions.get(endpoint)
    scope = getattr(view, "required_scope", None) or ENDPOINT_SCOPES.get(endpoint)
    if scope:
        return scope
    return "read" if method in ("GET", "HEAD") else "admin"


def rate_limited_response(decision: Decision) -> Response:
    return error_response(429, f"rate limit exceeded ({decision.limit}); retry after {decision.retry_after} s",
                          retry_after=decision.retry_after, reason=f"rate_limited_{decision.budget}")


def install_auth(app: Flask, cfg: Config, store: KeyStore, limits: RateLimits | None = None) -> None:
    """Check every request's key and scope, and count it against its rate limit.

    Order: a request with a valid key is counted against that key's budget (ADMIN_API_KEY:
    not counted), then its scope is checked; a request without a valid key is counted
    against its IP address's budget, then refused (401) unless the endpoint is public.
    """
    if cfg.admin_api_key and len(cfg.admin_api_key) < 32 and not cfg.testing:
        log.warning("ADMIN_API_KEY is shorter than 32 characters; use `python -m backend keys create`"
                    " style keys (256 random bits)")
    if cfg.auth_required and not cfg.admin_api_key:
        log.info("no ADMIN_API_KEY: create keys with `python -m backend keys create`")
    if limits is not None and not limits.enabled:
        limits = None
    anonymous = anonymous_identity(cfg.anonymous_devices) if cfg.anonymous_devices else None
    if anonymous is not None:
        log.warning("ANONYMOUS_DEVICES is set: POST /api/telemetry (seed 002) accepts requests without an API key"
                    " for device(s) %s; every other route and device still needs a key",
                    ", ".join(sorted(cfg.anonymous_devices)))

    def limit_ip() -> Response | None:
        if limits is None:
            return None
        decision = limits.check_ip(request.remote_addr, request.endpoint)
        return None if decision.allowed else rate_limited_response(decision)

    @app.before_request
    def _authenticate() -> Response | None:
        if request.method == "OPTIONS":
            return None  # CORS preflight
        endpoint = request.endpoint
        scope = PUBLIC if endpoint is None else required_scope(app, endpoint, request.method)
        if scope == PUBLIC or not cfg.auth_required:
            # Public endpoints, 404/405, or auth switched off: counted per IP only.
            if scope != PUBLIC:
                g.fleet_identity = OPEN
            return limit_ip()
        ident, status = authenticate(store, request)
        if ident is None:
            limited = limit_ip()
            if limited is not None:
                return limited
            if status == "missing" and anonymous is not None and endpoint in ANONYMOUS_ENDPOINTS:
                g.fleet_identity = anonymous
                return None
            if status == "unavailable":
                return error_response(503, "cannot check the API key right now (database unreachable);"
                                      " retry later", retry_after=5, reason="auth_unavailable")
            resp = error_response(401, UNAUTHORIZED)
            resp.headers["WWW-Authenticate"] = 'Bearer realm="telemetry"'
            return resp
        g.fleet_key_id = ident.key_id  # the access log names the key of a refused request too
        if limits is not None and not ident.master:
            decision = limits.check_key(ident.key_id, endpoint)
            if not decision.allowed:
                return rate_limited_response(decision)
        if not ident.allows(scope):
            return error_response(403, f"this API key does not have the {scope!r} scope")
        g.fleet_identity = ident
        store.touch(ident)
        return None

    if cfg.testing:
        pid = str(os.getpid())

        @app.after_request
        def _served_by(resp: Response) -> Response:
            resp.headers["X-Served-By"] = pid  # lets multi-worker tests see which worker answered
            return resp
