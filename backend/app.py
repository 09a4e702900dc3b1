"""The app factory: one worker's objects, each given its collaborators when it is built.

gunicorn calls `backend:create_app()` once in each worker; tests call it with a Config.
`app.extensions["telemetry"]` is the worker's `Services`; its `close()` is the one shutdown.
"""

from __future__ import annotations

import atexit
from typing import Any

from flask import Flask, Response
from werkzeug.exceptions import HTTPException

from backend import dashboard
from backend.api import (
    alerts,
    config_routes,
    devices,
    export,
    flow_stats,
    fluxio,
    health,
    keys,
    metrics_routes,
    openapi,
    request_id,
    stream,
    telemetry,
    thingsboard,
)
from backend.api.doors import init_doors
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
from backend.ops import logs, requests
from backend.ops.health import HealthCheck
from backend.ops.wiring import build_ops
from backend.services import Services
from backend.store.database import Database
from backend.store.export import Exporter
from backend.store.maintenance import Maintenance
from backend.store.pool import make_pool
from backend.store.retention import RetentionPolicy
from backend.store.rollups import RollupMerger

# Every route's module; backend/api/openapi.py describes each of their routes.
BLUEPRINTS = (health, telemetry, config_routes, devices, alerts, keys, fluxio, flow_stats, thingsboard, stream,
              metrics_routes, openapi, dashboard)


def create_app(config: Config | None = None, **overrides: Any) -> Flask:
    cfg = (config or Config.from_env()).replace(**overrides)
    logs.configure(cfg.log_level, cfg.log_format)  # JSON lines with the request id (backend/ops/logs.py)
    database = Database.resolve(cfg)  # embedded PostgreSQL when DATABASE_URL is empty
    pool = make_pool(database.url, cfg.db_pool_min, cfg.db_pool_max)
    observers = WriteObservers()  # who learns of committed writes: the alert engine (fleet)
    write_path = WritePath.build(cfg, pool, observers)  # buffer, circuit, spool, replayer: docs/reliability.md
    buffer = write_path.buffer
    catalogue = FieldCatalogue.for_buffer(GuardedPool(pool, write_path.circuit), buffer, cfg)
    maintenance = Maintenance(pool, cfg.partitions_ahead_months, policy=RetentionPolicy.from_config(cfg))
    rollups = RollupMerger(pool, cfg.rollup_merge_interval_s, cfg.stream_retention_s)  # folds committed readings (migrations/0052)
    checks = HealthCheck(cfg, database, pool, buffer, write_path.spool)

    app = Flask("backend")
    app.config.update(MAX_CONTENT_LENGTH=cfg.max_body_bytes, TESTING=cfg.testing)
    in_flight = admission.install(app, cfg.max_readings_in_flight)  # bounded ingest memory
    # API keys and scopes, rate limits, CORS, devices, alerts: docs/fleet.md
    fleet = init_fleet(app, cfg, pool, observers, make_rate_limits(cfg), buffer.sink_available)
    ops = build_ops(write_path, observers, catalogue, in_flight, fleet)  # metrics, instance status
    svc = Services(cfg, database, pool, write_path, catalogue, in_flight, checks, maintenance, fleet, ops, rollups)
    svc.init_app(app)
    init_doors(app, cfg, pool, buffer.sink_available)  # Idempotency-Key, line protocol: docs/doors.md
    init_stream(app, cfg, database.url, observers)  # live stream: publisher, tokens (docs/stream.md)
    export.init_app(app, Exporter(database.url, cfg.export_max_concurrent))  # GET /telemetry/export
    for module in BLUEPRINTS:
        app.register_blueprint(module.bp)
    requests.install(app, ops.metrics)  # per-request metrics and access-log fields
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
