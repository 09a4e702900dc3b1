"""One Config object, read from the environment (and a .env file when present).

Every variable here is documented in `.env.example`. Names the seed systems already use
(SUPABASE_URL, SUPABASE_SERVICE_ROLE_KEY, REDIS_URL, PORT) keep their names so an existing
`.env` keeps working.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any


def _bool(value: str | None, default: bool) -> bool:
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def _int(value: str | None, default: int) -> int:
    return int(value) if value not in (None, "") else default


def _float(value: str | None, default: float) -> float:
    return float(value) if value not in (None, "") else default


def _list(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


@dataclass(frozen=True)
class Config:
    # Where the data lives. Empty DATABASE_URL means "start an embedded PostgreSQL in DATA_DIR".
    database_url: str = ""
    data_dir: str = "./data"
    db_pool_min: int = 1
    db_pool_max: int = 4
    # Ingest and batching
    batch_size: int = 500
    flush_max_readings: int = 5000
    flush_interval: float = 1.0
    flush_linger: float = 0.010
    max_retries: int = 3
    retry_base_delay: float = 0.2
    retry_max_delay: float = 30.0
    buffer_max_readings: int = 200_000
    ack_timeout: float = 10.0
    max_body_bytes: int = 10 * 1024 * 1024
    max_decompressed_bytes: int = 50 * 1024 * 1024
    max_lines_per_body: int = 100_000
    store_raw_payload: bool = True
    data_source: str = "flask_api"
    # Bounded work per request (docs/benchmarks.md, "Bounded work per request").
    max_readings_in_flight: int = 400_000
    max_new_fields_per_request: int = 500
    max_new_fields_per_key_per_hour: int = 2000
    catalogue_cache_size: int = 20_000
    # Spool (write-ahead log used when PostgreSQL cannot take the write right now)
    spool_dir: str = ""
    spool_max_bytes: int = 1024 * 1024 * 1024
    spool_min_free_bytes: int = 256 * 1024 * 1024
    # /health says "degraded" once the oldest acknowledged, not yet stored reading is older (s).
    health_max_unflushed_age: float = 60.0
    # Partitions
    partitions_ahead_months: int = 3
    # Auth, limits, CORS
    admin_api_key: str = ""
    auth_required: bool = True
    rate_limit_default: str = "6000/minute"
    rate_limit_ip: str = "12000/minute"
    redis_url: str = ""
    cors_origins: list[str] = field(default_factory=list)
    # Proxies in front of us (nginx: 1) whose X-Forwarded-For is trusted for the client IP.
    proxy_fix_hops: int = 0
    # Devices and alerts
    device_offline_after_s: int = 15 * 60
    alert_silence_check_s: float = 30.0
    # Webhook URLs that resolve to loopback, link-local (cloud metadata) or private addresses
    # are refused unless this is true.
    alert_webhook_allow_private: bool = False
    # Seed compatibility: the Supabase project these variables point at
    supabase_url: str = ""
    supabase_service_role_key: str = ""
    supabase_project_id: str = ""
    # Server
    host: str = "127.0.0.1"
    port: int = 5000
    web_concurrency: int = 0
    # Slow clients (backend/http_worker.py): seconds for the header block; for the body, seconds
    # plus one more per CLIENT_BODY_MIN_RATE bytes received.
    client_header_timeout: float = 10.0
    client_body_timeout: float = 20.0
    client_body_min_rate: int = 500
    client_buffer_max_bytes: int = 64 * 1024 * 1024
    log_level: str = "INFO"
    testing: bool = False
    # Fault injection, only honoured when testing is on (see docs/reliability.md).
    fault_point: str = ""

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: Any) -> Config:
        """Build the config from `env` (default: os.environ after loading .env)."""
        if env is None:
            try:
                from dotenv import load_dotenv

                load_dotenv(Path.cwd() / ".env", override=False)
            except ImportError:  # pragma: no cover - dotenv is a hard requirement
                pass
            env = dict(os.environ)
        g = env.get
        cfg = cls(
            database_url=g("DATABASE_URL", ""),
            data_dir=g("DATA_DIR", "./data"),
            db_pool_min=_int(g("DB_POOL_MIN"), 1),
            db_pool_max=_int(g("DB_POOL_MAX"), 4),
            batch_size=_int(g("BATCH_SIZE"), 500),
            flush_max_readings=_int(g("FLUSH_MAX_READINGS"), 5000),
            flush_interval=_float(g("FLUSH_INTERVAL"), 1.0),
            flush_linger=_float(g("FLUSH_LINGER"), 0.010),
            max_retries=_int(g("MAX_RETRIES"), 3),
            retry_base_delay=_float(g("RETRY_BASE_DELAY"), 0.2),
            retry_max_delay=_float(g("RETRY_MAX_DELAY"), 30.0),
            buffer_max_readings=_int(g("BUFFER_MAX_READINGS"), 200_000),
            ack_timeout=_float(g("ACK_TIMEOUT"), 10.0),
            max_body_bytes=_int(g("MAX_BODY_BYTES"), 10 * 1024 * 1024),
            max_decompressed_bytes=_int(g("MAX_DECOMPRESSED_BYTES"), 50 * 1024 * 1024),
            max_lines_per_body=_int(g("MAX_LINES_PER_BODY"), 100_000),
            store_raw_payload=_bool(g("STORE_RAW_PAYLOAD"), True),
            data_source=g("DATA_SOURCE", "flask_api"),
            max_readings_in_flight=_int(g("MAX_READINGS_IN_FLIGHT"), 400_000),
            max_new_fields_per_request=_int(g("MAX_NEW_FIELDS_PER_REQUEST"), 500),
            max_new_fields_per_key_per_hour=_int(g("MAX_NEW_FIELDS_PER_KEY_PER_HOUR"), 2000),
            catalogue_cache_size=_int(g("CATALOGUE_CACHE_SIZE"), 20_000),
            spool_dir=g("SPOOL_DIR", ""),
            spool_max_bytes=_int(g("SPOOL_MAX_BYTES"), 1024 * 1024 * 1024),
            spool_min_free_bytes=_int(g("SPOOL_MIN_FREE_BYTES"), 256 * 1024 * 1024),
            health_max_unflushed_age=_float(g("HEALTH_MAX_UNFLUSHED_AGE"), 60.0),
            partitions_ahead_months=_int(g("PARTITIONS_AHEAD_MONTHS"), 3),
            admin_api_key=g("ADMIN_API_KEY", ""),
            auth_required=_bool(g("AUTH_REQUIRED"), True),
            rate_limit_default=g("RATE_LIMIT_DEFAULT", "6000/minute"),
            rate_limit_ip=g("RATE_LIMIT_IP", "12000/minute"),
            redis_url=g("REDIS_URL", ""),
            cors_origins=_list(g("CORS_ORIGINS")),
            proxy_fix_hops=_int(g("PROXY_FIX_HOPS"), 0),
            device_offline_after_s=_int(g("DEVICE_OFFLINE_AFTER_S"), 15 * 60),
            alert_silence_check_s=_float(g("ALERT_SILENCE_CHECK_S"), 30.0),
            alert_webhook_allow_private=_bool(g("ALERT_WEBHOOK_ALLOW_PRIVATE"), False),
            supabase_url=g("SUPABASE_URL", ""),
            supabase_service_role_key=g("SUPABASE_SERVICE_ROLE_KEY", ""),
            supabase_project_id=g("SUPABASE_PROJECT_ID", ""),
            host=g("HOST", "127.0.0.1"),
            port=_int(g("PORT"), 5000),
            web_concurrency=_int(g("WEB_CONCURRENCY"), 0),
            client_header_timeout=_float(g("CLIENT_HEADER_TIMEOUT"), 10.0),
            client_body_timeout=_float(g("CLIENT_BODY_TIMEOUT"), 20.0),
            client_body_min_rate=_int(g("CLIENT_BODY_MIN_RATE"), 500),
            client_buffer_max_bytes=_int(g("CLIENT_BUFFER_MAX_BYTES"), 64 * 1024 * 1024),
            log_level=g("LOG_LEVEL", "INFO"),
            testing=_bool(g("TESTING"), False),
            fault_point=g("FAULT_POINT", ""),
        )
        return replace(cfg, **overrides) if overrides else cfg

    def public(self) -> dict[str, Any]:
        """The settings safe to show an operator (no secrets, no connection strings)."""
        secret = {"database_url", "admin_api_key", "supabase_service_role_key", "redis_url"}
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in secret}
