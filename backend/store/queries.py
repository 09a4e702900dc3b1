"""Reading telemetry back: filters, ordering from a fixed list, wide pivot (buckets: aggregates.py).

Every identifier in SQL comes from the whitelists here; values are always parameters.

Readings of given devices in time order are read one series (device, metric) at a time
from the unique key (device_id, metric, ts): the newest N of each series, merged. There
is no (device_id, ts) index to read them from: it cost about 30% of PostgreSQL's CPU per
stored reading (migrations/0012), and a device has a handful of metrics, so N index
entries per series read the same rows. Which metrics a device has comes from the same
index, one probe per metric (a "loose index scan"), so readings stored by any path are
found, not only those the write path put in device_latest.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from psycopg import sql
from psycopg_pool import ConnectionPool

# order_by names a field of the answer's rows; the column behind it. A row's arrival time is
# `created_at`, the name seed 001's rows (and its default order_by) gave it.
ORDER_COLUMNS = {
    "ts": "ts",
    "created_at": "received_at",
    "device_id": "device_id",
    "metric": "metric",
    "value": "value",
}
# Accepted for order_by too (earlier versions answered with them); the answer names the field.
ORDER_ALIASES = {"timestamp": "ts", "received_at": "created_at"}
MAX_LIMIT = 10_000
# The total order of narrow reads (keyset pagination): the order_by column in the request's
# direction, then the tie-breaks the offset pages always had (ascending, except ts DESC after
# device_id or metric), completed to the unique key (device_id, metric, ts) so the last row of
# a page is an exact position. True: the column follows the request's direction. A text
# reading has no value: it sorts as NaN does (after every number, where NULLs sort), so the
# comparison needs no NULL case.
KEYSET: dict[str, tuple[tuple[str, bool | str], ...]] = {
    "ts": (("ts", True), ("device_id", "ASC"), ("metric", "ASC")),
    "received_at": (("received_at", True), ("device_id", "ASC"), ("metric", "ASC"), ("ts", "ASC")),
    "device_id": (("device_id", True), ("ts", "DESC"), ("metric", "ASC")),
    "metric": (("metric", True), ("ts", "DESC"), ("device_id", "ASC")),
    "value": (("value", True), ("device_id", "ASC"), ("metric", "ASC"), ("ts", "ASC")),
}
KEY_KINDS = {"ts": "time", "received_at": "time", "device_id": "text", "metric": "text", "value": "number"}


class QueryError(ValueError):
    """A parameter the client got wrong; the message names it."""


# The calendar's ends (Python's, inside PostgreSQL's): query bounds beyond them are clamped.
MIN_TIME = datetime.min.replace(tzinfo=UTC)
MAX_TIME = datetime.max.replace(tzinfo=UTC)


def parse_time_param(name: str, value: str | None) -> datetime | None:
    """ISO 8601 (no offset: UTC) or epoch seconds, in UTC, clamped to MIN_TIME..MAX_TIME."""
    if value in (None, ""):
        return None
    try:
        if value.replace(".", "", 1).isdigit():
            seconds = float(value)
            try:
                return datetime.fromtimestamp(seconds, tz=UTC)
            except (OverflowError, OSError, ValueError):
                return MAX_TIME  # only digits: an epoch past year 9999
        ts = datetime.fromisoformat(value)
    except ValueError as exc:
        raise QueryError(f"{name}: {value[:40]!r} is not an ISO 8601 time or epoch seconds") from exc
    if ts.tzinfo is None:
        return ts.replace(tzinfo=UTC)
    try:
        return ts.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00+14:00 is in year 0, 9999-12-31T23:00-05:00 in 10000
        return MIN_TIME if ts.year == 1 else MAX_TIME


def shift(ts: datetime, delta: timedelta) -> datetime:
    """ts + delta, clamped to the calendar's ends."""
    try:
        return ts + delta
    except OverflowError:
        return MIN_TIME if delta < timedelta(0) else MAX_TIME


def hours_before(ts: datetime, hours: float) -> datetime:
    if hours * 3600 >= (ts - MIN_TIME).total_seconds():
        return MIN_TIME  # also where timedelta(hours=...) itself would overflow
    return ts - timedelta(hours=hours)


def parse_int(name: str, value: str | None, default: int, lo: int, hi: int) -> int:
    if value in (None, ""):
        return default
    try:
        n = int(value)
    except ValueError as exc:
        raise QueryError(f"{name}: {value[:20]!r} is not a whole number") from exc
    if not lo <= n <= hi:
        raise QueryError(f"{name}: must be between {lo} and {hi}")
    return n


def parse_bool(name: str, value: str | None, default: bool) -> bool:
    if value in (None, ""):
        return default
    v = value.lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise QueryError(f"{name}: {value[:20]!r} is not true or false")


@dataclass
class ReadingQuery:
    device_ids: list[str]
    metrics: list[str]
    start: datetime | None
    end: datetime | None
    limit: int = 100
    offset: int = 0
    order_by: str = "ts"
    desc: bool = True
    numeric_only: bool = False
    after: tuple[Any, ...] | None = None  # keyset: rows after this sort key (see KEYSET)

    @classmethod
    def from_params(cls, p: dict[str, Any]) -> ReadingQuery:
        """From the values of backend/api/telemetry.py's declared parameters."""
        start, end = p["start"], p["end"]
        if p.get("hours") is not None and start is None:
            start = hours_before(datetime.now(UTC), p["hours"])
        if start and end and start > end:
            raise QueryError("start is after end")
        return cls(device_ids=p["device_id"], metrics=p["metric"], start=start, end=end, limit=p["limit"],
                   offset=p["offset"], order_by=ORDER_ALIASES.get(p["order_by"], p["order_by"]), desc=p["desc"])

    def where(self) -> tuple[sql.Composable, list[Any]]:
        parts: list[sql.Composable] = []
        params: list[Any] = []
        if self.device_ids:
            parts.append(_in("device_id", self.device_ids))
            params.append(_one_or_all(self.device_ids))
        if self.metrics:
            parts.append(_in("metric", self.metrics))
            params.append(_one_or_all(self.metrics))
        parts += self._range(params)
        clause = sql.SQL(" WHERE ") + sql.SQL(" AND ").join(parts) if parts else sql.SQL("")
        return clause, params

    def _range(self, params: list[Any], prefix: str = "") -> list[sql.Composable]:
        """The time range and value filters (appending their parameters), for either form."""
        parts: list[sql.Composable] = []
        if self.start:
            parts.append(sql.SQL(prefix + "ts >= %s"))
            params.append(self.start)
        if self.end:
            parts.append(sql.SQL(prefix + "ts < %s"))
            params.append(self.end)
        if self.numeric_only:
            parts.append(sql.SQL(prefix + "value IS NOT NULL"))
        if self.after is not None:
            parts.append(self._after(prefix, params))
        return parts

    def _keyset(self, prefix: str = "") -> list[tuple[str, str, str]]:
        """(column expression, direction, name) of the total order."""
        out = []
        for name, d in KEYSET[ORDER_COLUMNS[self.order_by]]:
            direction = ("DESC" if self.desc else "ASC") if d is True else str(d)
            expr = f"coalesce({prefix}value, 'NaN'::float8)" if name == "value" else prefix + name
            out.append((expr, direction, name))
        return out

    def _after(self, prefix: str, params: list[Any]) -> sql.Composable:
        """Rows after the key: c1 beyond v1, or c1 = v1 and c2 beyond v2, ... (directions may differ)."""
        keys = self._keyset(prefix)
        values = [float("nan") if v is None and KEY_KINDS[n] == "number" else v
                  for (_, _, n), v in zip(keys, self.after or (), strict=True)]
        first, direction, _ = keys[0]
        params.append(values[0])  # the first column alone as well: that one an index range scan can use
        ors = []
        for i, (expr, direction_i, _) in enumerate(keys):
            eqs = [f"{e} = %s" for e, _, _ in keys[:i]]
            ors.append("(" + " AND ".join([*eqs, f"{expr} {'<' if direction_i == 'DESC' else '>'} %s"]) + ")")
            params += [*values[:i], values[i]]
        return sql.SQL(f"{first} {'<=' if direction == 'DESC' else '>='} %s AND (" + " OR ".join(ors) + ")")

    def key_kinds(self) -> list[str]:
        return [KEY_KINDS[n] for n, _ in KEYSET[ORDER_COLUMNS[self.order_by]]]

    def per_series(self) -> bool:
        """Devices given and time order: read series by series (see the module docstring)."""
        return bool(self.device_ids) and ORDER_COLUMNS[self.order_by] == "ts"

    def series(self, columns: str) -> tuple[sql.Composable, list[Any]]:
        """`WITH RECURSIVE s(d, m) ... FROM s CROSS JOIN LATERAL (newest rows of one series) r`.

        Each series gives at most offset + limit rows in the requested order, which holds
        every row of the merged page: a row that is among the first offset + limit overall
        is among the first offset + limit of its own series.
        """
        if self.metrics:
            pairs = sql.SQL("s(d, m) AS (SELECT d, m FROM unnest(%s::text[]) d CROSS JOIN unnest(%s::text[]) m)")
            params: list[Any] = [self.device_ids, self.metrics]
        else:
            pairs = sql.SQL(
                "s(d, m) AS ("
                " SELECT d, (SELECT metric FROM telemetry_readings WHERE device_id = d ORDER BY metric LIMIT 1)"
                " FROM unnest(%s::text[]) d"
                " UNION ALL"
                " SELECT s.d, (SELECT metric FROM telemetry_readings WHERE device_id = s.d AND metric > s.m"
                " ORDER BY metric LIMIT 1) FROM s WHERE s.m IS NOT NULL)")
            params = [self.device_ids]
        conds = [sql.SQL("t.device_id = s.d AND t.metric = s.m"), *self._range(params, "t.")]
        params.append(self.offset + self.limit)
        stmt = (sql.SQL("WITH RECURSIVE ") + pairs
                + sql.SQL(" SELECT " + columns + " FROM s CROSS JOIN LATERAL (SELECT * FROM telemetry_readings t WHERE ")
                + sql.SQL(" AND ").join(conds)
                + sql.SQL(" ORDER BY t.ts " + ("DESC" if self.desc else "ASC") + " LIMIT %s) r WHERE s.m IS NOT NULL"))
        return stmt, params

    def order(self) -> sql.Composable:
        # A total order (KEYSET), so pages neither overlap nor skip.
        return sql.SQL(" ORDER BY " + ", ".join(f"{e} {d}" for e, d, _ in self._keyset()))


def _in(column: str, values: list[str]) -> sql.Composable:
    # `= %s` for one value: the planner can then use the order of the rest of the unique key
    # (metric, ts for one device; ts for one device and metric) instead of sorting every match.
    return sql.SQL("{} = %s" if len(values) == 1 else "{} = ANY(%s)").format(sql.Identifier(column))


def _one_or_all(values: list[str]) -> str | list[str]:
    return values[0] if len(values) == 1 else values


def iso(ts: datetime) -> str:
    """The one form of a time in every answer: UTC, ending in Z."""
    if ts.utcoffset():  # a session TimeZone other than UTC hands back local times
        try:
            ts = ts.astimezone(UTC)
        except OverflowError:
            pass
    return ts.isoformat().replace("+00:00", "Z")


def value_of(value: float | None, text: str | None) -> Any:
    if text is not None:
        return text
    if value is not None and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


def fetch_readings(pool: ConnectionPool, q: ReadingQuery) -> list[dict[str, Any]]:
    return fetch_page(pool, q)[0]


def fetch_page(pool: ConnectionPool, q: ReadingQuery) -> tuple[list[dict[str, Any]], tuple[Any, ...] | None]:
    """A page of narrow rows and the sort key of its last row (None when the page is not full)."""
    columns = "device_id, metric, ts, value, value_text, received_at"
    if q.per_series():
        stmt, params = q.series(columns)  # s has only d and m, so the names are r's
        stmt += q.order() + sql.SQL(" LIMIT %s OFFSET %s")
    else:
        where, params = q.where()
        stmt = sql.SQL("SELECT " + columns + " FROM telemetry_readings") + where + q.order() + sql.SQL(
            " LIMIT %s OFFSET %s")
    with pool.connection() as conn:
        rows = conn.execute(stmt, [*params, q.limit, q.offset]).fetchall()
    data = [{"device_id": d, "metric": m, "ts": iso(t), "value": value_of(v, vt), "created_at": iso(r)}
            for d, m, t, v, vt, r in rows]
    last = None
    if rows and len(rows) == q.limit:
        d, m, t, v, _, r = rows[-1]
        by_col = {"ts": t, "received_at": r, "device_id": d, "metric": m, "value": v}
        last = tuple(by_col[c] for c, _ in KEYSET[ORDER_COLUMNS[q.order_by]])
    return data, last


def fetch_wide(pool: ConnectionPool, q: ReadingQuery) -> list[dict[str, Any]]:
    """One record per (device, time) with a key per metric, like the seed's rows."""
    order_col = "received_at" if ORDER_COLUMNS[q.order_by] == "received_at" else "ts"
    columns = ("device_id, ts, max(received_at) AS received_at,"
               " array_agg(metric), array_agg(value), array_agg(value_text)")
    if order_col == "ts" and q.device_ids:
        # A wide row is one timestamp: the first offset + limit timestamps of the page all
        # lie within the first offset + limit rows of each series that has a value there.
        stmt, params = q.series(columns)
    else:
        where, params = q.where()
        stmt = sql.SQL("SELECT " + columns + " FROM telemetry_readings") + where
    stmt = (stmt + sql.SQL(" GROUP BY 1, 2")
            + sql.SQL(" ORDER BY {} {}, 1").format(sql.Identifier(order_col), sql.SQL("DESC" if q.desc else "ASC"))
            + sql.SQL(" LIMIT %s OFFSET %s"))
    with pool.connection() as conn:
        rows = conn.execute(stmt, [*params, q.limit, q.offset]).fetchall()
    out = []
    for device, ts, received, metrics, values, texts in rows:
        record: dict[str, Any] = {"device_id": device, "ts": iso(ts), "created_at": iso(received)}
        for m, v, t in zip(metrics, values, texts, strict=True):
            record[m] = value_of(v, t)
        out.append(record)
    return out



def fetch_numeric(pool: ConnectionPool, q: ReadingQuery, cap: int) -> list[tuple[str, str, datetime, float, datetime]]:
    """Every numeric reading q selects (up to cap + 1), by series then time: input for downsampling."""
    q = ReadingQuery(device_ids=q.device_ids, metrics=q.metrics, start=q.start, end=q.end, numeric_only=True)
    where, params = q.where()
    stmt = (sql.SQL("SELECT device_id, metric, ts, value, received_at FROM telemetry_readings") + where
            + sql.SQL(" ORDER BY device_id, metric, ts LIMIT %s"))
    with pool.connection() as conn:
        return conn.execute(stmt, [*params, cap + 1]).fetchall()
