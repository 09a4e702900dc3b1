"""The app factory: one worker's objects, each given its collaborators when it is built.

gunicorn calls `backend:create_app()` once in each worker; tests call it with a Config.
`app.extensions["telemetry"]` is the worker's `Services`; its `close()` is the one shutdown.
"""

from __future__ import annotations

import atexit
import logging
from typing import Any

from flask import Flask, Response
from werkzeug.exceptions import HTTPException

from backend.api import config_routes, health, request_id, telemetry
from backend.api.health import HealthCheck
from backend.api.responses import error_response, unexpected_error_response
from backend.config import Config
from backend.fleet import init_fleet
from backend.fleet.ratelimit import make_rate_limits
from backend.ingest import admission
from backend.ingest.catalogue import FieldCatalogue
from backend.ingest.guarded_pool import GuardedPool
from backend.ingest.observers import WriteObservers
from backend.ingest.write_path import WritePath
from backend.live.wiring import init_stream
from backend.services import Services
from backend.store.database import Database
from backend.store.maintenance import Maintenance
from backend.store.pool import make_pool


def create_app(config: Config | None = None, **overrides: Any) -> Flask:
    cfg = (config or Config.from_env()).replace(**overrides)
    logging.basicConfig(level=cfg.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    database = Database.resolve(cfg)  # embedded PostgreSQL when DATABASE_URL is empty
    pool = make_pool(database.url, cfg.db_pool_min, cfg.db_pool_max)
    observers = WriteObservers()  # who learns of committed writes: the alert engine (fleet)
    write_path = WritePath.build(cfg, pool, observers)  # buffer, circuit, spool, replayer: docs/reliability.md
    buffer = write_path.buffer
    catalogue = FieldCatalogue.for_buffer(GuardedPool(pool, write_path.circuit), buffer, cfg)
    maintenance = Maintenance(pool, cfg.partitions_ahead_months)
    checks = HealthCheck(cfg, database, pool, buffer, write_path.spool)

    app = Flask("backend")
    app.config.update(MAX_CONTENT_LENGTH=cfg.max_body_bytes, TESTING=cfg.testing)
    in_flight = admission.install(app, cfg.max_readings_in_flight)  # bounded ingest memory
    # API keys and scopes, rate limits, CORS, devices, alerts: docs/fleet.md
    fleet = init_fleet(app, cfg, pool, observers, make_rate_limits(cfg), buffer.sink_available)
    svc = Services(cfg, database, pool, write_path, catalogue, in_flight, checks, maintenance, fleet)
    svc.init_app(app)
    for module in (health, telemetry, config_routes):
        app.register_blueprint(module.bp)
    init_stream(app, cfg, database.url, observers)  # live stream: publisher, tokens (docs/stream.md)
    request_id.init_app(app)  # X-Request-Id on every answer (backend/api/request_id.py)
    register_error_handlers(app)
    svc.start()
    atexit.register(svc.close)
    return app



def register_error_handlers(app: Flask) -> None:
    """Every error is a JSON answer; only a bug (not a client's mistake) is logged with its trace."""

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        return error_response(exc.code or 500, exc.description or exc.name)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        resp, is_bug = unexpected_error_response(exc)
        if is_bug:
            app.logger.exception("unhandled error")
        return resp
