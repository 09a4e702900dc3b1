"""Alert rules, their evaluation as readings are written, silence checks and webhooks.

Where the work happens:
- the batch flusher calls `AlertEngine.on_written` after each committed write; it only
  picks out the readings some rule watches (a set lookup per reading; nothing at all when
  there are no rules) and queues them;
- one evaluator thread per worker drains that queue and, in one transaction per round,
  moves each (rule, device) through normal -> pending -> firing -> normal. The state lives
  in `alert_state` (rows locked while evaluated), so workers that receive readings of the
  same device agree; the partial unique index on alerts keeps one open alert per rule and
  device whatever happens;
- a silence check runs every ALERT_SILENCE_CHECK_S on whichever worker wins the lease row
  in `fleet_jobs`, so once across all workers;
- webhooks go out from a small thread pool, retried with exponential backoff (tenacity).

Rules of evaluation (see `step`): a breach must last `duration_s` of measurement time
before an alert opens; with `hysteresis` h an `above` rule at H clears only at
value <= H - h, so a value hovering at the threshold does not flap; readings whose
measurement time is older than the replay window (5 min) when they are written (a
gateway's backlog) do not touch live alert state; a reading older than the newest one
already evaluated for that rule and device is ignored.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlparse

import orjson
import psycopg
import requests
from psycopg_pool import ConnectionPool, PoolClosed
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from .parsing.base import DEVICE_RE, NAME_RE

log = logging.getLogger(__name__)

RULE_TYPES = ("above", "below", "outside", "silent")
SEVERITIES = ("info", "warning", "critical")
# FluxIO rule types, mapped to ours: (rule_type, default metric)
FLUXIO_RULE_TYPES = {
    "high_flow": ("above", "flow_rate"),
    "low_flow": ("below", "flow_rate"),
    "battery_low": ("below", "battery_level"),
    "no_data": ("silent", None),
    "device_offline": ("silent", None),
}
REPLAY_WINDOW = timedelta(minutes=5)

_ALERT_COLUMNS = ("id, rule_id, device_id, metric, alert_type, severity, message, threshold_value, actual_value,"
                  " triggered_at, created_at, is_resolved, resolved_at, resolved_by, resolved_value, notified_at,"
                  " metadata")
_RULE_COLUMNS = ("id, rule_name, device_id, metric, rule_type, threshold_low, threshold_high, hysteresis,"
                 " duration_s, auto_resolve, severity, is_enabled, webhook_url, created_at")


class RuleError(ValueError):
    """A rule or alert request the client got wrong; the message says what."""


def _iso(ts: datetime | None) -> str | None:
    return ts.isoformat().replace("+00:00", "Z") if ts else None


# ---- rules and the state machine (pure) ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rule:
    id: int
    rule_name: str
    device_id: str | None
    metric: str | None
    rule_type: str
    threshold_low: float | None
    threshold_high: float | None
    hysteresis: float = 0.0
    duration_s: int = 0
    auto_resolve: bool = True
    severity: str = "warning"
    is_enabled: bool = True
    webhook_url: str | None = None
    created_at: datetime | None = None

    def classify(self, v: float) -> str:
        """'breach', 'clear' or 'band' (between the threshold and the hysteresis edge: no change)."""
        lo, hi, h = self.threshold_low, self.threshold_high, self.hysteresis
        if self.rule_type == "above":
            assert hi is not None
            return "breach" if v > hi else "clear" if v <= hi - h else "band"
        if self.rule_type == "below":
            assert lo is not None
            return "breach" if v < lo else "clear" if v >= lo + h else "band"
        if self.rule_type == "outside":
            assert lo is not None and hi is not None
            if v < lo or v > hi:
                return "breach"
            return "clear" if lo + h <= v <= hi - h else "band"
        return "clear"

    def threshold_for(self, v: float | None) -> float | None:
        if self.rule_type == "above":
            return self.threshold_high
        if self.rule_type == "below":
            return self.threshold_low
        if self.rule_type == "outside":
            return self.threshold_low if v is not None and self.threshold_low is not None \
                and v < self.threshold_low else self.threshold_high
        return float(self.duration_s)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "rule_name": self.rule_name, "device_id": self.device_id, "metric": self.metric,
            "rule_type": self.rule_type, "threshold_value": self.threshold_for(None),
            "threshold_low": self.threshold_low, "threshold_high": self.threshold_high,
            "hysteresis": self.hysteresis, "duration_s": self.duration_s,
            "duration_minutes": round(self.duration_s / 60, 3), "auto_resolve": self.auto_resolve,
            "severity": self.severity, "is_enabled": self.is_enabled, "webhook_url": self.webhook_url,
            "created_at": _iso(self.created_at),
        }


@dataclass(slots=True)
class State:
    state: str = "normal"  # normal | pending | firing
    since: datetime | None = None
    last_ts: datetime | None = None
    last_value: float | None = None


def step(rule: Rule, st: State, ts: datetime, v: float) -> str | None:
    """Feed one reading; returns 'open', 'resolve' or None and updates `st` in place."""
    if st.last_ts is not None and ts <= st.last_ts:
        return None  # older than what we already judged (re-sent or out-of-order)
    st.last_ts, st.last_value = ts, v
    c = rule.classify(v)
    if st.state == "normal":
        if c != "breach":
            return None
        st.state, st.since = "pending", ts
    if st.state == "pending":
        if c == "clear":
            st.state, st.since = "normal", None
            return None
        if c == "breach" and st.since is not None and (ts - st.since).total_seconds() >= rule.duration_s:
            st.state = "firing"
            return "open"
        return None
    # firing
    if c == "clear":
        st.state, st.since = "normal", None
        return "resolve" if rule.auto_resolve else None
    return None


def _rule(row: tuple) -> Rule:
    return Rule(*row)


def _finite(name: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise RuleError(f"{name}: a finite number")
    return float(value)


def parse_rule(body: Any) -> dict[str, Any]:
    """Validate a rule from the API (our names or FluxIO's) into column values."""
    if not isinstance(body, dict):
        raise RuleError("body: a JSON object")
    name = body.get("rule_name") or body.get("name")
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        raise RuleError("rule_name: required, at most 200 characters")
    rtype = body.get("rule_type")
    metric = body.get("metric")
    if rtype in FLUXIO_RULE_TYPES:
        rtype, default_metric = FLUXIO_RULE_TYPES[rtype]
        metric = metric or default_metric
    if rtype not in RULE_TYPES:
        raise RuleError(f"rule_type: one of {', '.join(RULE_TYPES + tuple(FLUXIO_RULE_TYPES))}")
    device = body.get("device_id")
    if device in ("", "*", "all"):
        device = None
    if device is not None and (not isinstance(device, str) or not DEVICE_RE.match(device)):
        raise RuleError("device_id: a device id, or null for every device")
    if rtype == "silent":
        metric = None
    elif not isinstance(metric, str) or not NAME_RE.match(metric):
        raise RuleError("metric: the metric the rule watches")
    low = _finite("threshold_low", body.get("threshold_low", body.get("min")))
    high = _finite("threshold_high", body.get("threshold_high", body.get("max")))
    single = _finite("threshold_value", body.get("threshold_value"))
    if rtype == "above":
        high = high if high is not None else single
        if high is None:
            raise RuleError("threshold_value (or threshold_high): required for an 'above' rule")
        low = None
    elif rtype == "below":
        low = low if low is not None else single
        if low is None:
            raise RuleError("threshold_value (or threshold_low): required for a 'below' rule")
        high = None
    elif rtype == "outside":
        if low is None or high is None or low > high:
            raise RuleError("threshold_low and threshold_high: required, low <= high, for an 'outside' rule")
    else:
        low = high = None
    hysteresis = _finite("hysteresis", body.get("hysteresis", 0)) or 0.0
    if hysteresis < 0:
        raise RuleError("hysteresis: must not be negative")
    if rtype == "outside" and low is not None and high is not None and 2 * hysteresis > high - low:
        raise RuleError("hysteresis: at most half the width of the allowed range")
    if "duration_s" in body:
        duration = _finite("duration_s", body["duration_s"])
    elif "duration_minutes" in body:
        minutes = _finite("duration_minutes", body["duration_minutes"])
        duration = None if minutes is None else minutes * 60
    else:
        duration = _finite("silent_minutes", body.get("silent_minutes"))
        duration = None if duration is None else duration * 60
    duration_s = int(round(duration or 0))
    if duration_s < 0 or duration_s > 366 * 86400:
        raise RuleError("duration_s: between 0 and a year")
    if rtype == "silent" and duration_s <= 0:
        raise RuleError("duration_s (or duration_minutes): how long a device may be silent, required")
    severity = body.get("severity", "warning")
    if severity not in SEVERITIES:
        raise RuleError(f"severity: one of {', '.join(SEVERITIES)}")
    auto_resolve = body.get("auto_resolve", True)
    enabled = body.get("is_enabled", True)
    if not isinstance(auto_resolve, bool) or not isinstance(enabled, bool):
        raise RuleError("auto_resolve, is_enabled: true or false")
    webhook = body.get("webhook_url")
    channels = body.get("notification_channels")
    if webhook is None and isinstance(channels, dict):
        webhook = channels.get("webhook_url") or channels.get("webhook")
    if webhook is not None:
        parsed = urlparse(webhook) if isinstance(webhook, str) else None
        if parsed is None or parsed.scheme not in ("http", "https") or not parsed.netloc or len(webhook) > 2000:
            raise RuleError("webhook_url: an http(s) URL")
    return {"rule_name": name.strip(), "device_id": device, "metric": metric, "rule_type": rtype,
            "threshold_low": low, "threshold_high": high, "hysteresis": hysteresis, "duration_s": duration_s,
            "auto_resolve": auto_resolve, "severity": severity, "is_enabled": enabled, "webhook_url": webhook}


def create_rule(pool: ConnectionPool, body: Any) -> Rule:
    values = parse_rule(body)
    cols = list(values)
    with pool.connection() as conn:
        row = conn.execute(
            f"INSERT INTO alert_rules ({', '.join(cols)}) VALUES ({', '.join(['%s'] * len(cols))})"
            f" RETURNING {_RULE_COLUMNS}", [values[c] for c in cols]).fetchone()
    assert row is not None
    return _rule(row)


def list_rules(pool: ConnectionPool, enabled_only: bool = False) -> list[Rule]:
    where = " WHERE is_enabled" if enabled_only else ""
    with pool.connection() as conn:
        rows = conn.execute(f"SELECT {_RULE_COLUMNS} FROM alert_rules{where} ORDER BY id").fetchall()
    return [_rule(r) for r in rows]


def delete_rule(pool: ConnectionPool, rule_id: int) -> bool:
    """Delete a rule; its open alerts are resolved (by 'rule deleted') and kept as history."""
    with pool.connection() as conn, conn.transaction():
        conn.execute("UPDATE alerts SET is_resolved = true, resolved_at = now(), resolved_by = 'rule deleted'"
                     " WHERE rule_id = %s AND NOT is_resolved", (rule_id,))
        row = conn.execute("DELETE FROM alert_rules WHERE id = %s RETURNING id", (rule_id,)).fetchone()
    return row is not None


# ---- alerts as the API shows them ------------------------------------------------------------


def alert_dict(row: tuple, device_name: str | None = None, location: str | None = None) -> dict[str, Any]:
    (aid, rule_id, device_id, metric, alert_type, severity, message, threshold, actual, triggered_at,
     created_at, is_resolved, resolved_at, resolved_by, resolved_value, notified_at, metadata) = row[:17]
    return {
        "id": aid, "rule_id": rule_id, "device_id": device_id, "metric": metric, "alert_type": alert_type,
        "severity": severity, "message": message, "threshold_value": threshold, "actual_value": actual,
        "triggered_at": _iso(triggered_at), "created_at": _iso(created_at), "is_resolved": is_resolved,
        "resolved_at": _iso(resolved_at), "resolved_by": resolved_by, "resolved_value": resolved_value,
        "notified_at": _iso(notified_at), "metadata": metadata or {},
        # FluxIO's dashboard reads the device's name and place from a joined `devices` object.
        "devices": {"device_name": device_name or device_id, "location": location},
    }


def list_alerts(pool: ConnectionPool, device_id: str | None = None, is_resolved: bool | None = None,
                limit: int = 100, offset: int = 0, severity: str | None = None,
                rule_id: int | None = None) -> list[dict[str, Any]]:
    parts, params = [], []
    if device_id:
        parts.append("a.device_id = %s")
        params.append(device_id)
    if is_resolved is not None:
        parts.append("a.is_resolved = %s")
        params.append(is_resolved)
    if severity:
        parts.append("a.severity = %s")
        params.append(severity)
    if rule_id is not None:
        parts.append("a.rule_id = %s")
        params.append(rule_id)
    where = " WHERE " + " AND ".join(parts) if parts else ""
    cols = ", ".join("a." + c.strip() for c in _ALERT_COLUMNS.split(","))
    stmt = (f"SELECT {cols}, d.name, d.location FROM alerts a LEFT JOIN devices d USING (device_id)"
            f"{where} ORDER BY a.created_at DESC, a.id DESC LIMIT %s OFFSET %s")
    with pool.connection() as conn:
        rows = conn.execute(stmt, [*params, limit, offset]).fetchall()
    return [alert_dict(r[:17], r[17], r[18]) for r in rows]


def set_resolved(pool: ConnectionPool, alert_id: int, is_resolved: bool, resolved_by: str | None) -> dict | None:
    """Resolve (or reopen) one alert. A resolved alert's rule state is left as it is: while the
    value stays in breach no new alert opens; it must return to normal and breach again."""
    with pool.connection() as conn:
        if is_resolved:
            row = conn.execute(
                "UPDATE alerts SET is_resolved = true, resolved_at = coalesce(resolved_at, now()),"
                f" resolved_by = %s WHERE id = %s RETURNING {_ALERT_COLUMNS}",
                (resolved_by or "api", alert_id)).fetchone()
        else:
            try:
                row = conn.execute(
                    "UPDATE alerts SET is_resolved = false, resolved_at = NULL, resolved_by = NULL,"
                    f" resolved_value = NULL WHERE id = %s RETURNING {_ALERT_COLUMNS}", (alert_id,)).fetchone()
            except psycopg.errors.UniqueViolation as exc:
                raise RuleError("another alert of the same rule and device is open; resolve that one first") from exc
    return alert_dict(row) if row else None


# ---- the engine ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RuleSet:
    rules: tuple[Rule, ...] = ()
    by_id: dict[int, Rule] = field(default_factory=dict)
    by_metric: dict[str, tuple[Rule, ...]] = field(default_factory=dict)

    @classmethod
    def of(cls, rules: list[Rule]) -> RuleSet:
        by_metric: dict[str, list[Rule]] = {}
        for r in rules:
            if r.is_enabled and r.rule_type != "silent" and r.metric:
                by_metric.setdefault(r.metric, []).append(r)
        return cls(tuple(rules), {r.id: r for r in rules}, {m: tuple(v) for m, v in by_metric.items()})


_OPEN_ALERT = f"""
INSERT INTO alerts (rule_id, device_id, metric, alert_type, severity, message, threshold_value, actual_value,
                    triggered_at)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (rule_id, device_id) WHERE NOT is_resolved DO NOTHING
RETURNING {_ALERT_COLUMNS}
"""
_AUTO_RESOLVE = f"""
UPDATE alerts SET is_resolved = true, resolved_at = now(), resolved_by = 'auto', resolved_value = %s
WHERE rule_id = %s AND device_id = %s AND NOT is_resolved
RETURNING {_ALERT_COLUMNS}
"""
_LEASE = """
INSERT INTO fleet_jobs AS j (name, last_run_at, owner) VALUES (%s, now(), %s)
ON CONFLICT (name) DO UPDATE SET last_run_at = now(), owner = excluded.owner
    WHERE j.last_run_at <= now() - make_interval(secs => %s)
RETURNING name
"""
# One alert per silent episode: not while one is open, and not again (after someone resolved
# it) until the device has sent something since.
_SILENCE_OPEN = f"""
INSERT INTO alerts (rule_id, device_id, alert_type, severity, message, threshold_value, actual_value, triggered_at)
SELECT r.id, d.device_id, 'silent', r.severity,
       format('device %s sent nothing for %s s (rule %s: silent for %s s)', d.device_id,
              floor(extract(epoch FROM now() - d.last_seen)), r.rule_name, r.duration_s),
       r.duration_s, floor(extract(epoch FROM now() - d.last_seen)),
       d.last_seen + make_interval(secs => r.duration_s)
FROM alert_rules r JOIN devices d ON r.device_id IS NULL OR r.device_id = d.device_id
WHERE r.rule_type = 'silent' AND r.is_enabled
  AND d.last_seen < now() - make_interval(secs => r.duration_s)
  AND NOT EXISTS (SELECT 1 FROM alerts a WHERE a.rule_id = r.id AND a.device_id = d.device_id
                  AND (NOT a.is_resolved OR a.triggered_at >= d.last_seen))
ORDER BY r.id, d.device_id
ON CONFLICT (rule_id, device_id) WHERE NOT is_resolved DO NOTHING
RETURNING {_ALERT_COLUMNS}
"""
_SILENCE_RESOLVE = """
UPDATE alerts a SET is_resolved = true, resolved_at = now(), resolved_by = 'auto'
FROM alert_rules r, devices d
WHERE a.rule_id = r.id AND d.device_id = a.device_id AND NOT a.is_resolved
  AND r.rule_type = 'silent' AND r.auto_resolve
  AND d.last_seen >= now() - make_interval(secs => r.duration_s)
RETURNING {cols}
""".format(cols=", ".join("a." + c.strip() for c in _ALERT_COLUMNS.split(",")))


class AlertEngine:
    def __init__(self, pool: ConnectionPool, *, silence_check_s: float = 30.0, rules_refresh_s: float = 2.0,
                 replay_window: timedelta = REPLAY_WINDOW, webhook_base_delay: float = 0.5,
                 webhook_max_delay: float = 30.0, webhook_attempts: int = 6, queue_max: int = 10_000) -> None:
        self.pool = pool
        self.silence_check_s = silence_check_s
        self.rules_refresh_s = rules_refresh_s
        self.replay_window = replay_window
        self.webhooks = WebhookSender(pool, webhook_base_delay, webhook_max_delay, webhook_attempts)
        self._rules: RuleSet | None = None
        self._rules_at = 0.0
        self._queue: queue.Queue[list[Any]] = queue.Queue(maxsize=queue_max)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.owner = f"{uuid.uuid4().hex[:8]}"
        self.stats = {"queued": 0, "dropped": 0, "evaluated": 0, "opened": 0, "resolved": 0, "errors": 0,
                      "skipped_replay": 0, "silence_runs": 0}

    # ---- wiring ----

    def start(self) -> None:
        # Rules load lazily on the evaluator thread: a worker booting while the database
        # is down must not wait on it (that delayed its first requests by seconds).
        for target, name in ((self._evaluate_loop, "alert-evaluator"), (self._silence_loop, "alert-silence")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        self.webhooks.close()

    def reload_rules(self) -> RuleSet:
        rules = RuleSet.of(list_rules(self.pool, enabled_only=True))
        self._rules, self._rules_at = rules, time.monotonic()
        return rules

    # ---- flusher side: cheap ----

    def on_written(self, batch: list[Any], result: Any = None) -> None:
        rules = self._rules
        if rules is not None and not rules.by_metric:
            return
        watched = rules.by_metric if rules is not None else None
        cutoff = datetime.now(UTC) - self.replay_window
        hits = []
        old = 0
        for sub in batch:
            for r in sub.readings:
                if r.value is None or (watched is not None and r.metric not in watched):
                    continue
                if r.ts < cutoff:
                    old += 1
                    continue
                hits.append(r)
        if old:
            self.stats["skipped_replay"] += old
        if not hits:
            return
        try:
            self._queue.put_nowait(hits)
            self.stats["queued"] += len(hits)
        except queue.Full:
            self.stats["dropped"] += len(hits)
            log.warning("alert queue full: %d readings not evaluated", len(hits))

    def drain(self, timeout: float = 10.0) -> bool:
        """Wait until every queued reading was evaluated (tests, shutdown)."""
        q = self._queue
        with q.all_tasks_done:
            return q.all_tasks_done.wait_for(lambda: q.unfinished_tasks == 0, timeout)

    # ---- evaluator thread ----

    def _evaluate_loop(self) -> None:
        while not self._stop.is_set():
            try:
                first = self._queue.get(timeout=0.5)
            except queue.Empty:
                if self.pool.closed:
                    return
                if time.monotonic() - self._rules_at >= self.rules_refresh_s:
                    try:
                        self._safe_reload()
                    except PoolClosed:
                        return
                continue
            items = [first]
            while len(items) < 200:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                if self._rules is None or time.monotonic() - self._rules_at >= self.rules_refresh_s:
                    self._safe_reload()
                readings = [r for item in items for r in item]
                for attempt in range(3):
                    try:
                        self.evaluate(readings)
                        break
                    except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure,
                            psycopg.OperationalError):
                        if attempt == 2:
                            raise
                        time.sleep(0.05 * (attempt + 1))
            except PoolClosed:
                return
            except Exception:  # noqa: BLE001 - one bad round must not stop evaluation
                self.stats["errors"] += 1
                log.exception("alert evaluation failed; %d readings skipped", sum(len(i) for i in items))
            finally:
                for _ in items:
                    self._queue.task_done()

    def _safe_reload(self) -> None:
        try:
            self.reload_rules()
        except PoolClosed:
            raise
        except Exception as exc:  # noqa: BLE001 - keep the old rules
            log.debug("alert rules reload failed: %s", exc)

    def evaluate(self, readings: list[Any]) -> tuple[list[dict], list[dict]]:
        """Run readings through the rules that watch them; returns (opened, resolved) alerts."""
        rules = self._rules or self.reload_rules()
        groups: dict[tuple[int, str], list[tuple[datetime, float]]] = {}
        for r in readings:
            for rule in rules.by_metric.get(r.metric, ()):
                if rule.device_id is None or rule.device_id == r.device_id:
                    groups.setdefault((rule.id, r.device_id), []).append((r.ts, r.value))
        if not groups:
            return [], []
        keys = sorted(groups)
        rule_ids = [k[0] for k in keys]
        devices = [k[1] for k in keys]
        opened: list[dict] = []
        resolved: list[dict] = []
        with self.pool.connection() as conn, conn.transaction():
            # Rows in one order, so workers evaluating the same devices cannot deadlock.
            conn.execute(
                "INSERT INTO alert_state (rule_id, device_id)"
                " SELECT v.r, v.d FROM unnest(%s::bigint[], %s::text[]) AS v(r, d)"
                " JOIN alert_rules ar ON ar.id = v.r ORDER BY 1, 2 ON CONFLICT DO NOTHING",
                (rule_ids, devices))
            rows = conn.execute(
                "SELECT s.rule_id, s.device_id, s.state, s.since, s.last_ts, s.last_value FROM alert_state s"
                " JOIN unnest(%s::bigint[], %s::text[]) AS v(r, d) ON s.rule_id = v.r AND s.device_id = v.d"
                " ORDER BY s.rule_id, s.device_id FOR UPDATE OF s", (rule_ids, devices)).fetchall()
            states = {(r[0], r[1]): State(r[2], r[3], r[4], r[5]) for r in rows}
            changed = []
            for key in keys:
                st = states.get(key)
                rule = rules.by_id.get(key[0])
                if st is None or rule is None:
                    continue  # the rule was deleted meanwhile
                before = (st.state, st.since, st.last_ts)
                for ts, v in sorted(groups[key], key=lambda p: p[0]):
                    action = step(rule, st, ts, v)
                    if action == "open":
                        row = conn.execute(_OPEN_ALERT, (
                            rule.id, key[1], rule.metric, rule.rule_type, rule.severity,
                            _message(rule, key[1], v), rule.threshold_for(v), v, ts)).fetchone()
                        if row:
                            opened.append(alert_dict(row))
                    elif action == "resolve":
                        resolved.extend(alert_dict(r) for r in conn.execute(_AUTO_RESOLVE, (v, rule.id, key[1])))
                if (st.state, st.since, st.last_ts) != before:
                    changed.append((key, st))
            if changed:
                conn.execute(
                    "UPDATE alert_state s SET state = v.state, since = v.since, last_ts = v.last_ts,"
                    " last_value = v.last_value"
                    " FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::timestamptz[], %s::timestamptz[],"
                    " %s::float8[]) AS v(r, d, state, since, last_ts, last_value)"
                    " WHERE s.rule_id = v.r AND s.device_id = v.d",
                    ([k[0] for k, _ in changed], [k[1] for k, _ in changed], [s.state for _, s in changed],
                     [s.since for _, s in changed], [s.last_ts for _, s in changed],
                     [s.last_value for _, s in changed]))
        self.stats["evaluated"] += len(readings)
        self.stats["opened"] += len(opened)
        self.stats["resolved"] += len(resolved)
        self._notify(rules, opened, "alert.opened")
        self._notify(rules, resolved, "alert.resolved")
        return opened, resolved

    def _notify(self, rules: RuleSet, alerts: list[dict], event: str) -> None:
        for a in alerts:
            rule = rules.by_id.get(a["rule_id"]) if a["rule_id"] is not None else None
            if rule is not None and rule.webhook_url:
                self.webhooks.submit(rule.webhook_url, {"event": event, "alert": a, "rule": rule.as_dict(),
                                                        "sent_at": _iso(datetime.now(UTC))}, a["id"])

    # ---- silence ----

    def _silence_loop(self) -> None:
        while not self._stop.wait(self.silence_check_s):
            if self.pool.closed:
                return
            try:
                self.run_silence_check()
            except PoolClosed:
                return
            except Exception as exc:  # noqa: BLE001 - try again next period
                log.warning("silence check failed: %s", exc)

    def run_silence_check(self, force: bool = False) -> tuple[list[dict], list[dict]]:
        """Open/resolve 'silent' alerts; without `force` only if this worker wins this period's lease."""
        with self.pool.connection() as conn, conn.transaction():
            if not force:
                won = conn.execute(_LEASE, ("alert_silence", self.owner, self.silence_check_s * 0.9)).fetchone()
                if not won:
                    return [], []
            opened = [alert_dict(r) for r in conn.execute(_SILENCE_OPEN)]
            resolved = [alert_dict(r) for r in conn.execute(_SILENCE_RESOLVE)]
        self.stats["silence_runs"] += 1
        self.stats["opened"] += len(opened)
        self.stats["resolved"] += len(resolved)
        if opened or resolved:
            rules = RuleSet.of(list_rules(self.pool))
            self._notify(rules, opened, "alert.opened")
            self._notify(rules, resolved, "alert.resolved")
        return opened, resolved

    def status(self) -> dict[str, Any]:
        rules = self._rules
        return {**self.stats, "pending": self._queue.qsize(),
                "rules_loaded": len(rules.rules) if rules is not None else None,
                "webhooks": dict(self.webhooks.stats)}


def _message(rule: Rule, device_id: str, v: float) -> str:
    vs = f"{v:g}"
    if rule.rule_type == "above":
        what = f"{rule.metric} {vs} above {rule.threshold_high:g}"
    elif rule.rule_type == "below":
        what = f"{rule.metric} {vs} below {rule.threshold_low:g}"
    else:
        what = f"{rule.metric} {vs} outside [{rule.threshold_low:g}, {rule.threshold_high:g}]"
    held = f" for {rule.duration_s} s" if rule.duration_s else ""
    return f"{device_id}: {what}{held} (rule {rule.rule_name!r})"


# ---- webhooks --------------------------------------------------------------------------------


class WebhookFailed(RuntimeError):
    """The receiver answered with a status worth retrying (5xx, 408, 429)."""


class WebhookSender:
    """POSTs alert events; each delivery retried with exponential backoff and jitter.

    Deliveries live in memory: a worker that dies with deliveries in flight loses them
    (alerts.notified_at stays NULL, so they can be found and re-sent).
    """

    def __init__(self, pool: ConnectionPool, base_delay: float, max_delay: float, attempts: int,
                 timeout: float = 5.0, workers: int = 4) -> None:
        self.pool = pool
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.attempts = attempts
        self.timeout = timeout
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="alert-webhook")
        self.stats = {"sent": 0, "failed": 0, "retries": 0}

    def submit(self, url: str, payload: dict[str, Any], alert_id: int) -> None:
        try:
            self._executor.submit(self._deliver, url, payload, alert_id)
        except RuntimeError:  # shut down
            pass

    def _deliver(self, url: str, payload: dict[str, Any], alert_id: int) -> None:
        body = orjson.dumps(payload)
        retrying = Retrying(
            stop=stop_after_attempt(self.attempts),
            wait=wait_random_exponential(multiplier=self.base_delay, max=self.max_delay),
            retry=retry_if_exception_type((requests.RequestException, WebhookFailed)),
            reraise=True,
            before_sleep=lambda _state: self._count("retries"),
        )
        try:
            retrying(self._post, url, body)
        except Exception as exc:  # noqa: BLE001 - give up on this delivery, keep the rest going
            self._count("failed")
            log.warning("webhook for alert %s to %s failed: %s", alert_id, urlparse(url).netloc, exc)
            return
        self._count("sent")
        try:
            with self.pool.connection(timeout=5.0) as conn:
                conn.execute("UPDATE alerts SET notified_at = now() WHERE id = %s", (alert_id,))
        except Exception as exc:  # noqa: BLE001 - delivered; only the bookkeeping failed
            log.debug("could not record webhook delivery of alert %s: %s", alert_id, exc)

    def _post(self, url: str, body: bytes) -> None:
        resp = requests.post(url, data=body, timeout=self.timeout,
                                  headers={"Content-Type": "application/json", "User-Agent": "telemetry-alerts/1"})
        if resp.status_code >= 500 or resp.status_code in (408, 429):
            raise WebhookFailed(f"HTTP {resp.status_code}")
        if resp.status_code >= 400:
            raise ValueError(f"HTTP {resp.status_code} (not retried)")

    def _count(self, name: str) -> None:
        self.stats[name] += 1

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
