"""The gateway-fleet features: API keys and scopes (auth/), rate limits, CORS, devices,
alerts (alerts/) and the seed-compatible routes. `init_fleet` wires them into the app,
once, from create_app(); docs/fleet.md describes them.
"""

from __future__ import annotations

import atexit
from collections.abc import Callable
from dataclasses import dataclass

from flask import Flask
from psycopg_pool import ConnectionPool

from backend.config import Config
from backend.fleet.alerts import AlertEngine, WebhookSender
from backend.fleet.auth import KeyStore, install_auth
from backend.fleet.ratelimit import RateLimits
from backend.ingest.observers import WriteObservers

CORS_HEADERS = ["Authorization", "X-API-Key", "Content-Type", "Content-Encoding", "X-Device-Id", "Idempotency-Key"]


@dataclass
class Fleet:
    """The fleet's long-lived objects of one worker; `close()` stops them (shutdown, tests)."""

    keys: KeyStore
    alerts: AlertEngine
    webhooks: WebhookSender
    limits: RateLimits

    def close(self, timeout: float = 5.0) -> None:
        self.keys.close()
        self.alerts.close(timeout)  # before the sender: it may still hand deliveries to it
        self.webhooks.close()


def init_fleet(app: Flask, cfg: Config, pool: ConnectionPool, observers: WriteObservers, limits: RateLimits,
               sink_available: Callable[[], bool]) -> Fleet:
    """Build the fleet's objects and register its hooks; returns them for shutdown. Its routes
    (backend/api/devices.py, alerts.py, keys.py, fluxio.py) are in app.BLUEPRINTS.

    `sink_available` is false while the write path knows the database is down: the key
    store then answers at once instead of waiting on it.
    """
    if cfg.proxy_fix_hops > 0:
        # Behind nginx: take the client address from X-Forwarded-For (per-IP limits need it).
        from werkzeug.middleware.proxy_fix import ProxyFix

        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=cfg.proxy_fix_hops,  # type: ignore[method-assign]
                                x_proto=cfg.proxy_fix_hops)
    if cfg.cors_origins:
        from flask_cors import CORS

        CORS(app, origins=cfg.cors_origins, allow_headers=CORS_HEADERS, expose_headers=["Retry-After"],
             methods=["GET", "POST", "PATCH", "DELETE", "OPTIONS"], max_age=600)

    store = KeyStore(pool, sink_available, cfg.admin_api_key)
    install_auth(app, cfg, store, limits)
    webhooks = WebhookSender(pool, base_delay=max(0.01, cfg.retry_base_delay), max_delay=cfg.retry_max_delay,
                             allow_private=cfg.alert_webhook_allow_private)
    engine = AlertEngine(pool, webhooks, silence_check_s=cfg.alert_silence_check_s)
    observers.register(engine.on_written)
    fleet = Fleet(store, engine, webhooks, limits)
    app.extensions["fleet"] = fleet
    # The names the blueprints and tests look them up by.
    app.extensions["fleet_keys"] = store
    app.extensions["fleet_alerts"] = engine
    app.extensions["fleet_limits"] = limits
    store.start()
    engine.start()
    atexit.register(fleet.close)
    return fleet
