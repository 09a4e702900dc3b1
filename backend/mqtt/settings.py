"""The subscriber's settings, checked once at start-up: a bad one is a ConfigError naming it.

They live in backend/config.py (MQTT_* variables, and TELTONIKA_REGISTER_MAP, which the
HTTP side reads too); this module turns them into typed values and refuses what a broker
would refuse later, or what would silently subscribe to nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from backend.config import Config, ConfigError

KINDS = ("thingsboard", "gateway", "generic", "teltonika")
CLIENT_ID_RE = re.compile(r"\A[A-Za-z0-9_.\-]{1,64}\Z")
LEVEL_RE = re.compile(r"\A[A-Za-z0-9_.\-]+\Z")
SCHEMES = {"mqtt": False, "tcp": False, "mqtts": True, "ssl": True}


@dataclass(frozen=True)
class Broker:
    host: str
    port: int
    tls: bool
    username: str | None
    password: str | None


@dataclass(frozen=True)
class MqttSettings:
    broker: Broker
    client_id: str
    group: str
    kinds: tuple[str, ...]
    generic_prefix: str
    tb_mount_prefix: str
    tb_device: str
    teltonika_topics: tuple[str, ...]
    session_expiry_s: int
    receive_maximum: int
    workers: int
    keepalive_s: int


def parse_broker(url: str) -> Broker:
    parts = urlsplit(url.strip())
    if parts.scheme not in SCHEMES:
        raise ConfigError(f"MQTT_BROKER_URL: scheme must be one of {', '.join(SCHEMES)} (got {url!r})")
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(f"MQTT_BROKER_URL: the port is not a number 1..65535 (got {url!r})") from None
    if not parts.hostname:
        raise ConfigError(f"MQTT_BROKER_URL: no host (got {url!r})")
    if parts.path not in ("", "/") or parts.query:
        raise ConfigError("MQTT_BROKER_URL: give only scheme://[user:password@]host[:port]")
    tls = SCHEMES[parts.scheme]
    return Broker(parts.hostname, port or (8883 if tls else 1883), tls,
                  unquote(parts.username) if parts.username else None,
                  unquote(parts.password) if parts.password else None)


def _level(name: str, value: str, allow_empty: bool = False) -> str:
    value = value.strip()
    if (value or not allow_empty) and not LEVEL_RE.fullmatch(value):
        raise ConfigError(f"{name}: one topic level of [A-Za-z0-9_.-], no '/', '+' or '#' (got {value!r})")
    return value


def check_filter(name: str, topic: str) -> str:
    """An MQTT topic filter: '+' and '#' only as whole levels, '#' last, no '$' start."""
    levels = topic.split("/")
    if not topic or topic.startswith("$") or any(lv == "" for lv in levels):
        raise ConfigError(f"{name}: {topic!r} is not a topic filter (empty level or starts with '$')")
    for i, lv in enumerate(levels):
        if ("+" in lv and lv != "+") or ("#" in lv and (lv != "#" or i != len(levels) - 1)):
            raise ConfigError(f"{name}: {topic!r}: '+' and '#' must be whole levels, '#' only last")
    return topic


def from_config(cfg: Config) -> MqttSettings:
    broker = parse_broker(cfg.mqtt_broker_url)
    if not CLIENT_ID_RE.fullmatch(cfg.mqtt_client_id):
        raise ConfigError(f"MQTT_CLIENT_ID: 1..64 characters of [A-Za-z0-9_.-] (got {cfg.mqtt_client_id!r})")
    kinds = tuple(k.strip() for k in cfg.mqtt_topics.split(",") if k.strip())
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise ConfigError(f"MQTT_TOPICS: a comma-separated list of {', '.join(KINDS)} (got {cfg.mqtt_topics!r})")
    teltonika = tuple(check_filter("MQTT_TELTONIKA_TOPICS", t.strip())
                      for t in cfg.mqtt_teltonika_topics.split(",") if t.strip())
    if "teltonika" in kinds and not teltonika:
        raise ConfigError("MQTT_TELTONIKA_TOPICS: empty, but MQTT_TOPICS includes teltonika")
    tb_device = cfg.mqtt_tb_device.strip()
    if tb_device:
        _level("MQTT_TB_DEVICE", tb_device)
    return MqttSettings(
        broker=broker, client_id=cfg.mqtt_client_id, group=_level("MQTT_GROUP", cfg.mqtt_group, allow_empty=True),
        kinds=kinds, generic_prefix=_level("MQTT_GENERIC_PREFIX", cfg.mqtt_generic_prefix),
        tb_mount_prefix=_level("MQTT_TB_MOUNT_PREFIX", cfg.mqtt_tb_mount_prefix), tb_device=tb_device,
        teltonika_topics=teltonika, session_expiry_s=cfg.mqtt_session_expiry_s,
        receive_maximum=cfg.mqtt_receive_maximum, workers=cfg.mqtt_workers, keepalive_s=cfg.mqtt_keepalive_s)
