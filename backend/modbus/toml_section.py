"""Typed getters over one table of the edge program's TOML file, with errors that name
the table and key (`devices[0].poll_interval: expected a number`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class ConfigError(ValueError):
    """The configuration cannot be used; the message says where and why."""


class Section:
    """A TOML table plus its location, with typed getters that complain precisely."""

    def __init__(self, data: Any, where: str) -> None:
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where}: expected a table")
        self.data = data
        self.where = where
        self.used: set[str] = set()

    def _get(self, key: str, default: Any) -> Any:
        self.used.add(key)
        return self.data.get(key, default)

    def err(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self.where}.{key}: {message}")

    def str_(self, key: str, default: str | None = None) -> str:
        value = self._get(key, default)
        if value is None:
            raise self.err(key, "is required")
        if not isinstance(value, str):
            raise self.err(key, f"expected a string, got {value!r}")
        return value

    def int_(self, key: str, default: int | None = None, low: int | None = None, high: int | None = None) -> int:
        value = self._get(key, default)
        if value is None:
            raise self.err(key, "is required")
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.err(key, f"expected an integer, got {value!r}")
        if (low is not None and value < low) or (high is not None and value > high):
            raise self.err(key, f"{value} is outside {low}..{high}")
        return value

    def float_(self, key: str, default: float | None = None, low: float = 0.0) -> float:
        value = self._get(key, default)
        if value is None:
            raise self.err(key, "is required")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.err(key, f"expected a number, got {value!r}")
        if value < low:
            raise self.err(key, f"must be >= {low}")
        return float(value)

    def choice(self, key: str, choices: tuple[str, ...], default: str | None = None) -> str:
        value = self.str_(key, default)
        if value not in choices:
            raise self.err(key, f"{value!r} is not one of {', '.join(choices)}")
        return value

    def check_unknown(self) -> None:
        # Typos like `poll_periode` would otherwise silently fall back to defaults.
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise ConfigError(f"{self.where}: unknown key(s) {', '.join(unknown)}")
