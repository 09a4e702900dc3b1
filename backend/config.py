"""One Config object, read from the environment (and a .env file when present).

Every variable here is documented in `.env.example`; each field's default and bounds are
written once, below. Names the seed systems already use (SUPABASE_PROJECT_ID, REDIS_URL,
PORT) keep their names so an existing `.env` keeps working. A bad value stops the start
with the variable's name and the reason (`ConfigError`), rather than a traceback later.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict
from pydantic_settings.sources import EnvSettingsSource

Positive = Annotated[float, Field(gt=0)]
NonNegative = Annotated[float, Field(ge=0)]
Count = Annotated[int, Field(ge=1)]
# 0 switches the bound off where the field's comment says so.
Bound = Annotated[int, Field(ge=0)]


class ConfigError(ValueError):
    """A setting that cannot be used; the message names each variable and why."""


class Config(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    # Where the data lives. Empty DATABASE_URL means "start an embedded PostgreSQL in DATA_DIR".
    database_url: str = ""
    data_dir: str = "./data"
    db_pool_min: Bound = 1
    db_pool_max: Count = 4
    # Ingest and batching
    batch_size: Count = 500
    flush_max_readings: Count = 5000
    flush_interval: Positive = 1.0
    flush_linger: NonNegative = 0.010
    max_retries: Count = 3
    retry_base_delay: NonNegative = 0.2
    retry_max_delay: NonNegative = 30.0
    buffer_max_readings: Count = 200_000
    ack_timeout: Positive = 10.0
    max_body_bytes: Count = 10 * 1024 * 1024
    max_decompressed_bytes: Count = 50 * 1024 * 1024
    max_lines_per_body: Count = 100_000
    store_raw_payload: bool = True
    data_source: str = "flask_api"
    # Bounded work per request (docs/benchmarks.md, "Bounded work per request"); 0 = unbounded.
    max_readings_in_flight: Bound = 400_000
    max_new_fields_per_request: Bound = 500
    max_new_fields_per_key_per_hour: Bound = 2000
    catalogue_cache_size: Count = 20_000
    # Spool (write-ahead log used when PostgreSQL cannot take the write right now)
    spool_dir: str = ""
    spool_max_bytes: Bound = 1024 * 1024 * 1024
    spool_min_free_bytes: Bound = 256 * 1024 * 1024
    # /health says "degraded" once the oldest acknowledged, not yet stored reading is older (s); 0 = off.
    health_max_unflushed_age: NonNegative = 60.0
    # Partitions
    partitions_ahead_months: Bound = 3
    # Auth, limits, CORS
    admin_api_key: str = ""
    auth_required: bool = True
    rate_limit_default: str = "6000/minute"
    rate_limit_ip: str = "12000/minute"
    redis_url: str = ""
    # NoDecode: the variable is a comma-separated list, not JSON.
    cors_origins: Annotated[list[str], NoDecode] = []
    # Proxies in front of us (nginx: 1) whose X-Forwarded-For is trusted for the client IP.
    proxy_fix_hops: Bound = 0
    # Devices and alerts
    device_offline_after_s: Count = 15 * 60
    alert_silence_check_s: Positive = 30.0
    # Webhook URLs that resolve to loopback, link-local (cloud metadata) or private addresses
    # are refused unless this is true.
    alert_webhook_allow_private: bool = False
    # Seed compatibility: the Supabase project shown by /config
    supabase_project_id: str = ""
    # Server
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 5000
    # Slow clients (backend/http_worker.py): seconds for the header block; for the body, seconds
    # plus one more per CLIENT_BODY_MIN_RATE bytes received.
    client_header_timeout: Positive = 10.0
    client_body_timeout: Positive = 20.0
    client_body_min_rate: Count = 500
    client_buffer_max_bytes: Count = 64 * 1024 * 1024
    log_level: str = "INFO"
    testing: bool = False
    # Fault injection, only honoured when testing is on (see docs/reliability.md).
    fault_point: str = ""
    # Supabase (issue 16, docs/scaling.md). The service writes through DATABASE_URL (PostgreSQL's
    # protocol); SUPABASE_URL is only read to refuse a start that would silently write to an
    # embedded database while the operator means Supabase (the seed's .env has only it).
    supabase_url: str = ""
    # Live stream (backend/live/, docs/stream.md): the asyncio process gunicorn's master starts.
    stream_enabled: bool = True
    # The stream process's own database URL (empty: DATABASE_URL). It LISTENs, so behind a
    # transaction-mode pooler give it a direct (session) connection string.
    stream_database_url: str = ""
    stream_host: str = "127.0.0.1"
    stream_port: Annotated[int, Field(ge=1, le=65535)] = 5001
    # What POST /api/stream/token answers as stream_url; empty: http://<request host>:STREAM_PORT/api/stream
    # (behind nginx, which routes /api/stream to the stream process: set "/api/stream").
    stream_public_url: str = ""
    stream_token_ttl_s: Annotated[int, Field(ge=10, le=86_400)] = 300
    stream_token_secret: str = ""  # empty: the per-database secret (stream_secret table)
    stream_queue_events: Count = 5000  # per subscriber; beyond it events are dropped and counted
    stream_heartbeat_s: Positive = 15.0
    stream_poll_s: Positive = 1.0  # re-read stream_events this often even without a wake-up
    # At most one read of new rows (and one write per subscriber) per this many ms: the wake-ups
    # of commits closer together than that are served by one read (docs/stream.md, Figures).
    stream_coalesce_ms: Annotated[int, Field(ge=0, le=1000)] = 100
    stream_retention_s: Annotated[int, Field(ge=60)] = 900
    stream_max_subscribers: Count = 5000
    stream_socketio_public: bool = False  # Socket.IO without a token (seed 002's dashboard sends none)
    # Rollups (issue 14, backend/store/rollups.py): each worker folds the committed readings
    # into the 1m/1h/1d rollups this often (one at a time across workers and instances);
    # reads add what is not folded yet, so this bounds work per fold, not staleness. 0: this
    # process does not fold (another must, or the tail that reads add keeps growing).
    rollup_merge_interval_s: NonNegative = 1.0
    # Retention (issue 14, backend/store/retention.py): days to keep per tier, 0 = keep forever
    # (the default). Old data goes by dropping whole monthly partitions; rollups must outlive
    # the raw rows they summarise: each of 1M, HOURLY, DAILY (when set) >= RAW.
    retention_raw_days: Bound = 0
    retention_1m_days: Bound = 0
    retention_hourly_days: Bound = 0
    retention_daily_days: Bound = 0
    retention_payload_days: Bound = 0
    retention_quarantine_days: Bound = 0
    # Streaming export (backend/api/export.py): concurrent exports per worker, each holding
    # its own database connection (not the pool's) for as long as the client reads.
    export_max_concurrent: Count = 2
    # Doors (issue 15, docs/doors.md): Idempotency-Key, line protocol, anonymous seed-002 writers.
    idempotency_ttl_s: Positive = 86_400.0  # how long a key's first answer is kept
    idempotency_wait_s: NonNegative = 10.0  # a concurrent duplicate waits this long for the first, then 409
    # Devices POST /api/telemetry (seed 002) accepts without an API key; empty = none (the default).
    anonymous_devices: Annotated[list[str], NoDecode] = []
    # Line protocol: the tags naming the device, first present wins; the metric's name.
    line_protocol_device_tags: Annotated[list[str], NoDecode] = ["device_id", "host"]
    line_protocol_metric: Literal["measurement.field", "field"] = "measurement.field"

    @field_validator("anonymous_devices", "line_protocol_device_tags", mode="before")
    @classmethod
    def _doors_lists(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @field_validator("anonymous_devices")
    @classmethod
    def _anonymous_devices(cls, value: list[str]) -> list[str]:
        from backend.ingest.parsing.base import DEVICE_RE

        bad = [d for d in value if not DEVICE_RE.fullmatch(d)]
        if bad:
            raise ValueError(f"device id {bad[0][:40]!r} has characters outside [A-Za-z0-9_.:-]")
        return value

    @field_validator("line_protocol_device_tags")
    @classmethod
    def _device_tags(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("name at least one tag (default: device_id,host)")
        return value

    # MQTT subscriber (python -m backend.mqtt; docs/doors.md). Checked by backend/mqtt/settings.py.
    mqtt_broker_url: str = "mqtt://127.0.0.1:1883"
    mqtt_client_id: str = "telemetry-ingest-1"
    mqtt_group: str = "telemetry"  # $share/<group>/... ; empty: plain subscriptions
    mqtt_topics: str = "thingsboard,gateway,generic,teltonika"
    mqtt_generic_prefix: str = "telemetry"
    mqtt_tb_mount_prefix: str = "tb"
    mqtt_tb_device: str = ""
    mqtt_teltonika_topics: str = "teltonika/+/data"
    mqtt_session_expiry_s: Annotated[int, Field(ge=0, le=4294967295)] = 7 * 24 * 3600
    mqtt_receive_maximum: Annotated[int, Field(ge=1, le=65535)] = 256
    mqtt_workers: Count = 64  # handlers in flight: more of them share each commit (docs/benchmarks.md, MQTT)
    mqtt_keepalive_s: Annotated[int, Field(ge=5, le=65535)] = 30
    teltonika_register_map: str = ""  # a JSON file {"<device id or *>": ["metric", null, ...]}

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        import logging

        level = value.strip().upper()
        if not isinstance(logging.getLevelName(level), int):
            raise ValueError("not a logging level (DEBUG, INFO, WARNING, ERROR, CRITICAL)")
        return level

    @model_validator(mode="after")
    def _consistent(self) -> Config:
        if self.supabase_url and not self.database_url:
            from backend.store.supabase_hint import missing_database_url

            raise ValueError(missing_database_url(self.supabase_url))
        if self.db_pool_min > self.db_pool_max:
            raise ValueError(f"DB_POOL_MIN={self.db_pool_min} is above DB_POOL_MAX={self.db_pool_max}")
        if self.retry_base_delay > self.retry_max_delay:
            raise ValueError(f"RETRY_BASE_DELAY={self.retry_base_delay:g} is above"
                             f" RETRY_MAX_DELAY={self.retry_max_delay:g}")
        if self.stream_token_secret and len(self.stream_token_secret) < 16:
            raise ValueError("STREAM_TOKEN_SECRET must have at least 16 characters")
        return self

    @model_validator(mode="after")
    def _retention_order(self) -> Config:
        raw = self.retention_raw_days
        for name in ("RETENTION_1M_DAYS", "RETENTION_HOURLY_DAYS", "RETENTION_DAILY_DAYS"):
            days = getattr(self, name.lower())
            if days and (not raw or days < raw):  # 0 is forever
                raise ValueError(f"{name}={days} is below RETENTION_RAW_DAYS={raw or 'forever (0)'}: rollups"
                                 " must be kept at least as long as the raw rows they summarise")
        return self

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise ConfigError(_explain(exc)) from None

    def replace(self, **changes: Any) -> Config:
        """A copy with `changes`, validated like a fresh Config (model_copy would skip that)."""
        return Config(**{**self.model_dump(), **changes})

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Config:
        """Build the config from `env`, or from os.environ and ./.env (the environment wins)."""
        if env is None:
            values = _EnvSettings().model_dump()  # raises ConfigError through Config.__init__
        else:
            values = _MappingSource(_EnvSettings, env)()
        return cls(**{**values, **overrides})

    # --- Operations (backend/ops/, docs/operations.md): log lines, who may read /metrics
    log_format: Literal["json", "text"] = "json"
    # Addresses that read /metrics without a key: comma-separated CIDRs (127.0.0.1/32,10.0.0.0/8).
    metrics_allow: Annotated[list[str], NoDecode] = []

    @field_validator("metrics_allow", mode="before")
    @classmethod
    def _cidrs(cls, value: Any) -> Any:
        import ipaddress

        items = [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else value
        for item in items:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not an address or CIDR network (e.g. 127.0.0.1/32)") from None
        return items


def _explain(exc: ValidationError) -> str:
    """One line per bad value, by variable name: 'ACK_TIMEOUT: Input should be a valid number'."""
    lines = []
    for err in exc.errors():
        if err["loc"]:
            lines.append(f"{str(err['loc'][0]).upper()}: {err['msg']} (got {err['input']!r})")
        else:  # a rule across variables: its message names them
            lines.append(err["msg"].removeprefix("Value error, "))
    return "; ".join(lines)


class _EnvSettings(BaseSettings, Config):
    # An empty variable means "the default", as in the .env.example template.
    model_config = SettingsConfigDict(env_file=".env", env_ignore_empty=True, extra="ignore", frozen=True)

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings],
                                   init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, dotenv_settings)


class _MappingSource(EnvSettingsSource):
    """The environment source over a given mapping instead of os.environ (tests, bench)."""

    def __init__(self, settings_cls: type[BaseSettings], env: Mapping[str, str]) -> None:
        self._mapping = {k.lower(): v for k, v in env.items() if v != ""}
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return self._mapping
