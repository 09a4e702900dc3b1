"""Telemetry ingestion service: Flask app factory.

Nothing happens at import time; `create_app()` builds the per-worker services (pool,
sink, buffer, catalogue) and registers the blueprints. gunicorn calls
`backend:create_app()` once in each worker.
"""

from __future__ import annotations

import atexit
import logging
from typing import Any

from flask import Flask, Response
from werkzeug.exceptions import HTTPException

from backend.config import Config

__all__ = ["create_app", "Config"]


def create_app(config: Config | None = None, **overrides: Any) -> Flask:
    from backend.api import config_routes, health, request_id, telemetry
    from backend.api.responses import error_response
    from backend.ingest.catalogue import FieldCatalogue
    from backend.ingest.guarded_pool import GuardedPool
    from backend.ingest.observers import WriteObservers
    from backend.ingest.write_path import WritePath
    from backend.services import Services
    from backend.store.pool import make_pool

    cfg = config or Config.from_env()
    if overrides:
        from dataclasses import replace

        cfg = replace(cfg, **overrides)
    logging.basicConfig(level=cfg.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    database_url = cfg.database_url
    if not database_url:
        from backend.store.embedded import start_embedded

        database_url, _handle = start_embedded(cfg.data_dir, cleanup=None)

    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = cfg.max_body_bytes
    app.config["TESTING"] = cfg.testing

    pool = make_pool(database_url, cfg.db_pool_min, cfg.db_pool_max)
    observers = WriteObservers()  # who learns of committed writes: the alert engine (fleet)
    write_path = WritePath.build(cfg, pool, observers)  # buffer, circuit, spool, replayer: docs/reliability.md
    buffer, spool = write_path.buffer, write_path.spool
    svc = Services(cfg, pool, buffer, FieldCatalogue.for_buffer(GuardedPool(pool, write_path.circuit), buffer, cfg))
    if spool is not None:
        svc.extras["spool"] = spool
    svc.extras["database_url"] = database_url
    app.extensions["telemetry"] = svc
    app.extensions["write_path"] = write_path  # its close() is the write path's shutdown
    from backend.ingest.admission import install as install_admission

    svc.extras["admission"] = install_admission(app, cfg.max_readings_in_flight)  # bounded ingest memory

    for module in (health, telemetry, config_routes):
        app.register_blueprint(module.bp)
    request_id.init_app(app)  # X-Request-Id on every answer (backend/api/request_id.py)
    from backend.fleet import init_fleet
    from backend.fleet.ratelimit import make_rate_limits

    # API keys and scopes, rate limits, CORS, devices, alerts: docs/fleet.md
    init_fleet(app, cfg, pool, observers, make_rate_limits(cfg), buffer.sink_available)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        return error_response(exc.code or 500, exc.description or exc.name)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        from backend.api.responses import unexpected_error_response

        resp, is_bug = unexpected_error_response(exc)
        if is_bug:
            app.logger.exception("unhandled error")
        return resp

    write_path.start()
    atexit.register(write_path.close, 10.0)
    from backend.store.maintenance import Maintenance

    maintenance = Maintenance(pool, cfg.partitions_ahead_months)
    maintenance.start()
    svc.extras["maintenance"] = maintenance
    return app
