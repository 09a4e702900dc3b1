"""Wires the gateway-fleet features into the app: keys and scopes, rate limits, CORS,
devices, alerts and the seed-compatible routes. Called once by create_app()."""

from __future__ import annotations

import atexit
from typing import Any

from flask import Flask


def install_fleet(app: Flask, svc: Any) -> None:
    from .alerts import AlertEngine
    from .api import alerts, devices, fluxio, keys
    from .auth import install_auth
    from .ratelimit import make_rate_limits

    cfg = svc.config
    hops = int(getattr(cfg, "proxy_fix_hops", 0) or 0)
    if hops > 0:
        # Behind nginx: take the client address from X-Forwarded-For (per-IP limits need it).
        from werkzeug.middleware.proxy_fix import ProxyFix

        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops)  # type: ignore[method-assign]

    if cfg.cors_origins:
        from flask_cors import CORS

        CORS(app, origins=cfg.cors_origins,
             allow_headers=["Authorization", "X-API-Key", "Content-Type", "Content-Encoding", "X-Device-Id"],
             expose_headers=["Retry-After"], methods=["GET", "POST", "PATCH", "DELETE", "OPTIONS"], max_age=600)

    limits = make_rate_limits(cfg)
    app.extensions["fleet_limits"] = limits
    store = install_auth(app, svc, limits)

    engine = AlertEngine(svc.pool, silence_check_s=cfg.alert_silence_check_s,
                         webhook_base_delay=max(0.01, cfg.retry_base_delay), webhook_max_delay=cfg.retry_max_delay)
    app.extensions["fleet_alerts"] = engine
    svc.extras["alerts"] = engine
    previous = svc.buffer.on_written
    if previous is None:
        svc.buffer.on_written = engine.on_written
    else:  # keep whatever else observes committed writes
        def _both(batch: Any, result: Any) -> None:
            try:
                previous(batch, result)
            finally:
                engine.on_written(batch, result)

        svc.buffer.on_written = _both
    engine.start()

    for module in (devices, alerts, keys, fluxio):
        app.register_blueprint(module.bp)

    def _stop() -> None:
        store.stop()
        engine.stop()

    atexit.register(_stop)
