"""The field catalogue: names, types, units and aliases of metrics.

Each worker keeps a copy so the hot path checks types without a query; a metric seen for
the first time is registered in PostgreSQL (first writer fixes its type) before the
request is acknowledged. If the database is unreachable the check is deferred to the
write, which quarantines a mistyped reading instead of storing it.
"""

from __future__ import annotations

import threading
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from .parsing import ParseError, Reading
from .parsing.base import Message


class FieldCatalogue:
    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool
        self._types: dict[str, str] = {}
        self._aliases: dict[str, str] = {}
        self._lock = threading.Lock()
        self._loaded = False

    def load(self) -> None:
        with self.pool.connection() as conn:
            rows = conn.execute("SELECT name, value_type, aliases FROM telemetry_fields").fetchall()
        with self._lock:
            for name, vtype, aliases in rows:
                self._types[name] = vtype
                for alias in aliases or ():
                    self._aliases[alias] = name
            self._loaded = True

    def describe(self) -> list[dict[str, Any]]:
        with self.pool.connection() as conn:
            rows = conn.execute(
                "SELECT name, value_type, description, unit, aliases, first_seen"
                " FROM telemetry_fields ORDER BY name"
            ).fetchall()
        return [
            {"name": n, "type": t, "description": d, "unit": u, "aliases": list(a or []),
             "first_seen": f.isoformat().replace("+00:00", "Z")}
            for n, t, d, u, a, f in rows
        ]

    def check(self, messages: list[Message]) -> tuple[list[Message], list[ParseError], bool]:
        """Apply aliases and reject messages whose values contradict a metric's type.

        The third value is True when every accepted reading's metric has a type registered
        in PostgreSQL, so the sink may skip its own type check (Submission.typed).
        """
        if not self._loaded:
            try:
                self.load()
            except psycopg.Error:
                pass
        unknown = {r.metric for m in messages for r in m.readings
                   if self._aliases.get(r.metric, r.metric) not in self._types}
        if unknown:
            self._register(messages, unknown)
        good: list[Message] = []
        errors: list[ParseError] = []
        typed = True
        for msg in messages:
            readings: list[Reading] = []
            problem = None
            for r in msg.readings:
                name = self._aliases.get(r.metric, r.metric)
                if name != r.metric:
                    r = Reading(r.device_id, name, r.ts, r.value, r.value_text)
                want = self._types.get(name)
                if want is None:
                    typed = False  # not registered (the database was unreachable)
                elif want != r.value_type:
                    problem = f"field {name!r}: metric is {want}, got {r.value_text or r.value!r}"
                    break
                readings.append(r)
            if problem:
                errors.append(ParseError(msg.position, problem, msg.raw))
            else:
                msg.readings = readings
                good.append(msg)
        return good, errors, typed

    def _register(self, messages: list[Message], names: set[str]) -> None:
        first_type: dict[str, str] = {}
        for m in messages:
            for r in m.readings:
                if r.metric in names:
                    first_type.setdefault(r.metric, r.value_type)
        try:
            with self.pool.connection(timeout=2.0) as conn:
                conn.execute(
                    "INSERT INTO telemetry_fields (name, value_type)"
                    " SELECT * FROM unnest(%s::text[], %s::text[]) ORDER BY 1 ON CONFLICT (name) DO NOTHING",
                    (list(first_type), list(first_type.values())),
                )
                rows = conn.execute(
                    "SELECT name, value_type FROM telemetry_fields WHERE name = ANY(%s)", (list(first_type),)
                ).fetchall()
        except (psycopg.Error, Exception):  # noqa: BLE001 - deferred to the write (see module doc)
            return
        with self._lock:
            self._types.update(dict(rows))
