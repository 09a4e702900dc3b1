"""The field catalogue: names, types, units and aliases of metrics.

A worker does not load the catalogue: a table of 400,000 names made a fresh worker's first
requests take seconds and its memory grow by ~280 MiB. It reads the aliased rows once
(a partial index keeps that small whatever the table's size) and looks other names up by
primary key when a request carries them, keeping at most CATALOGUE_CACHE_SIZE of them in
memory (least recently used go first; a type never changes, so a dropped one is just
looked up again).

A metric seen for the first time is registered in PostgreSQL (first writer fixes its
type) before the request is acknowledged, within bounds:
  * at most MAX_NEW_FIELDS_PER_REQUEST new names per request (else 400, nothing stored);
  * at most MAX_NEW_FIELDS_PER_KEY_PER_HOUR new names per API key in a rolling hour,
    counted in PostgreSQL (telemetry_fields.api_key_id), so for all workers and
    instances (else 429 + Retry-After).
Each lookup runs under the same deadline as a buffer write (half of ACK_TIMEOUT). If the
database does not answer in time, the circuit is opened (as a timed-out write would) and
the check is deferred to the write: the request is spooled, and the replayer's write
registers the names and quarantines a mistyped reading instead of storing it. Deferred
names are bounded too, without the database: per request as above (503: they cannot be
checked now), and per key as distinct unconfirmed names per worker per hour (503).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import psycopg

from backend.ingest.deadline import DeadlineRunner, WriteTimeout
from backend.ingest.parsing import ParseError, Reading
from backend.ingest.parsing.base import Message

if TYPE_CHECKING:
    from backend.config import Config
    from backend.ingest.buffer import BatchBuffer
    from backend.ingest.guarded_pool import GuardedPool

log = logging.getLogger(__name__)

WINDOW_S = 3600.0


class CatalogueLimit(Exception):
    """A request would introduce more new metric names than a bound allows (or than can be checked now)."""

    def __init__(self, kind: str, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind  # too_many_new_fields | new_field_quota | catalogue_unchecked (api/ maps them to statuses)
        self.message = message
        self.retry_after = retry_after


class FieldCatalogue:
    def __init__(
        self,
        pool: GuardedPool,
        *,
        timeout: float = 5.0,
        cache_size: int = 20_000,
        max_new_per_request: int = 500,
        max_new_per_key_hour: int = 2000,
        on_unreachable: Callable[[str], None] | None = None,
    ) -> None:
        self.pool = pool
        self.timeout = timeout
        self.cache_size = max(1, cache_size)
        self.max_new_per_request = max_new_per_request
        self.max_new_per_key_hour = max_new_per_key_hour
        self.on_unreachable = on_unreachable
        # Its own threads: a lookup hung on a frozen database must not queue ahead of the
        # buffer's writes, nor they ahead of it.
        self.runner = DeadlineRunner(max_threads=4, name="catalogue")
        self._types: OrderedDict[str, str] = OrderedDict()
        self._aliases: dict[str, str] = {}
        self._aliases_loaded = False
        self._deferred: dict[str, dict[str, float]] = {}  # key id -> unconfirmed name -> when
        self._lock = threading.Lock()

    @classmethod
    def for_buffer(cls, pool: GuardedPool, buffer: BatchBuffer, cfg: Config) -> FieldCatalogue:
        """The catalogue of a worker: the buffer's write deadline, its circuit, the config's bounds."""
        return cls(pool, timeout=buffer.write_timeout, cache_size=cfg.catalogue_cache_size,
                   max_new_per_request=cfg.max_new_fields_per_request,
                   max_new_per_key_hour=cfg.max_new_fields_per_key_per_hour,
                   on_unreachable=buffer.report_sink_failure)

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

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {"cached": len(self._types), "cache_size": self.cache_size, "aliases": len(self._aliases),
                    "aliases_loaded": self._aliases_loaded,
                    "max_new_per_request": self.max_new_per_request,
                    "max_new_per_key_per_hour": self.max_new_per_key_hour}

    def check(self, messages: list[Message], key_id: str | None = None,
              timeout: float | None = None) -> tuple[list[Message], list[ParseError], bool]:
        """Apply aliases and reject messages whose values contradict a metric's type.

        The third value is True when every accepted reading's metric has a type registered
        in PostgreSQL, so the sink may skip its own type check (Submission.typed). Raises
        CatalogueLimit when the request would pass a bound on new names.
        """
        first: dict[str, str] = {}  # metric as sent -> the value type of its first reading
        for m in messages:
            for r in m.readings:
                if r.metric not in first:
                    first[r.metric] = r.value_type
        types: dict[str, str] = {}
        missing: dict[str, str] = {}
        with self._lock:
            for sent, vtype in first.items():
                name = self._aliases.get(sent, sent)
                want = self._types.get(name)
                if want is None:
                    missing[sent] = vtype
                else:
                    self._types.move_to_end(name)
                    types[name] = want
        if missing:
            types.update(self._resolve(missing, key_id, self.timeout if timeout is None else timeout))
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
                want = types.get(name)
                if want is None:
                    typed = False  # not registered (the database did not answer in time)
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

    # ---- database side --------------------------------------------------------------------

    def _resolve(self, missing: dict[str, str], key_id: str | None, timeout: float) -> dict[str, str]:
        try:
            return self.runner.run(self._lookup, missing, key_id, timeout=timeout)
        except CatalogueLimit:
            raise
        except WriteTimeout as exc:
            # The same verdict a timed-out write gets: later writes go to the spool at once
            # and the probe closes the circuit when the database answers again.
            log.warning("field catalogue: %s", exc)
            if self.on_unreachable is not None:
                self.on_unreachable(f"field catalogue lookup: {exc}")
        except Exception as exc:  # noqa: BLE001 - circuit open, refused, pool timeout: deferred (module doc)
            log.info("field catalogue lookup deferred to the write: %s", str(exc)[:200])
        self._defer(missing, key_id)
        return {}

    def _lookup(self, missing: dict[str, str], key_id: str | None) -> dict[str, str]:
        """Types of the request's names not in memory; registers the new ones (on a runner thread)."""
        with self.pool.connection(timeout=self.timeout) as conn:
            if not self._aliases_loaded:
                rows = conn.execute("SELECT name, value_type, aliases FROM telemetry_fields"
                                    " WHERE aliases <> '{}'").fetchall()
                with self._lock:
                    for name, vtype, aliases in rows:
                        self._remember_locked(name, vtype)
                        for alias in aliases:
                            self._aliases[alias] = name
                    self._aliases_loaded = True
            wanted: dict[str, str] = {}
            for sent, vtype in missing.items():
                wanted.setdefault(self._aliases.get(sent, sent), vtype)
            found = dict(conn.execute("SELECT name, value_type FROM telemetry_fields WHERE name = ANY(%s)",
                                      (list(wanted),)).fetchall())
            new = {n: t for n, t in wanted.items() if n not in found}
            if new:
                self._register(conn, new, key_id)
                found.update(conn.execute("SELECT name, value_type FROM telemetry_fields WHERE name = ANY(%s)",
                                          (list(new),)).fetchall())
        with self._lock:
            for name, vtype in found.items():
                self._remember_locked(name, vtype)
        return found

    def _register(self, conn: psycopg.Connection, new: dict[str, str], key_id: str | None) -> None:
        if 0 < self.max_new_per_request < len(new):
            raise CatalogueLimit("too_many_new_fields",
                f"the body has {len(new)} new metric names (not yet in the field catalogue);"
                f" at most MAX_NEW_FIELDS_PER_REQUEST={self.max_new_per_request} per request;"
                f" nothing was stored (e.g. {', '.join(sorted(new)[:3])})")
        with conn.transaction():
            limit = self.max_new_per_key_hour
            if key_id is not None and limit > 0:
                # One registration per key at a time, so two workers cannot both pass the count.
                conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", ("telemetry_fields/" + key_id,))
                used, wait_s = conn.execute(
                    "SELECT count(*), ceil(extract(epoch FROM min(first_seen) + interval '1 hour' - now()))"
                    " FROM telemetry_fields WHERE api_key_id = %s AND first_seen > now() - interval '1 hour'",
                    (key_id,),
                ).fetchone()
                if used + len(new) > limit:
                    raise CatalogueLimit(
                        "new_field_quota",
                        f"this API key introduced {used} new metric names in the last hour and this body has"
                        f" {len(new)} more; at most MAX_NEW_FIELDS_PER_KEY_PER_HOUR={limit}; nothing was stored,"
                        " retry later", retry_after=int(min(WINDOW_S, max(1, wait_s or 1))))
            conn.execute(
                "INSERT INTO telemetry_fields (name, value_type, api_key_id)"
                " SELECT n, t, %s FROM unnest(%s::text[], %s::text[]) AS u(n, t) ORDER BY 1"
                " ON CONFLICT (name) DO NOTHING",
                (key_id, list(new), list(new.values())),
            )

    # ---- memory side ----------------------------------------------------------------------

    def _remember_locked(self, name: str, vtype: str) -> None:
        self._types[name] = vtype
        self._types.move_to_end(name)
        while len(self._types) > self.cache_size:
            self._types.popitem(last=False)

    def _defer(self, missing: dict[str, str], key_id: str | None) -> None:
        """Bound what goes unchecked while the database cannot be asked (some may be known names)."""
        names = {self._aliases.get(sent, sent) for sent in missing}
        if 0 < self.max_new_per_request < len(names):
            raise CatalogueLimit("catalogue_unchecked",
                f"the body has {len(names)} metric names this worker cannot check against the"
                " field catalogue now (database unreachable); at most"
                f" MAX_NEW_FIELDS_PER_REQUEST={self.max_new_per_request} go unchecked;"
                " not stored, retry later", retry_after=5)
        limit = self.max_new_per_key_hour
        if key_id is None or limit <= 0:
            return
        now = time.monotonic()
        with self._lock:
            seen = self._deferred.setdefault(key_id, {})
            for name in [n for n, t in seen.items() if now - t > WINDOW_S]:
                del seen[name]
            fresh = names.difference(seen)
            if len(seen) + len(fresh) > limit:
                raise CatalogueLimit("catalogue_unchecked",
                    f"this API key sent {len(seen) + len(fresh)} metric names in the last hour"
                    " that cannot be checked against the field catalogue now (database"
                    f" unreachable); at most MAX_NEW_FIELDS_PER_KEY_PER_HOUR={limit};"
                    " not stored, retry later", retry_after=5)
            for name in fresh:
                seen[name] = now
