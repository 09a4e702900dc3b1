"""TELTONIKA_REGISTER_MAP: the per-gateway names of Modbus register values, read from a JSON file.

`{"<device id>": ["flow_rate", "totalizer", null, "temperature"], "*": [...]}`: the n-th
value of a Teltonika register list becomes the n-th name (null: not stored). Both doors
use it: the MQTT subscriber loads it once at start (a bad file stops it, naming the
variable), the HTTP side per request through a cache that re-reads the file when it changes.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import orjson

from backend.config import Config, ConfigError
from backend.ingest.parsing.teltonika import TeltonikaParser, validate_mapping

_cache: dict[tuple[str, float], TeltonikaParser] = {}
_lock = threading.Lock()


def load_register_map(cfg: Config) -> dict[str, tuple[str | None, ...]]:
    """TELTONIKA_REGISTER_MAP's file, checked; {} when unset. Raises ConfigError naming the problem."""
    path = cfg.teltonika_register_map.strip()
    if not path:
        return {}
    try:
        doc = orjson.loads(Path(path).read_bytes())
    except OSError as exc:
        raise ConfigError(f"TELTONIKA_REGISTER_MAP: cannot read {path!r}: {exc.strerror}") from None
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"TELTONIKA_REGISTER_MAP: {path!r} is not JSON: {exc}") from None
    try:
        return validate_mapping(doc)
    except ValueError as exc:
        raise ConfigError(f"TELTONIKA_REGISTER_MAP: {path!r}: {exc}") from None


def teltonika_parser(cfg: Config) -> TeltonikaParser:
    """A Teltonika parser with the current mapping (re-read when the file's mtime changes)."""
    path = cfg.teltonika_register_map.strip()
    try:
        mtime = os.stat(path).st_mtime if path else 0.0
    except OSError:
        mtime = -1.0
    key = (path, mtime)
    with _lock:
        parser = _cache.get(key)
    if parser is None:
        parser = TeltonikaParser(load_register_map(cfg))
        with _lock:
            _cache.clear()
            _cache[key] = parser
    return parser
