"""The alert engine: evaluates committed readings against the rules, opens and resolves alerts.

Where the work happens:
- the batch flusher calls `AlertEngine.on_written` (registered with the write observers)
  after each committed write; it only picks out the readings some rule watches (a set
  lookup per reading; nothing at all when there are no rules) and queues them;
- one evaluator thread per worker drains that queue and, in one transaction per round,
  moves each (rule, device) through normal -> pending -> firing -> normal (rules.step). The
  state lives in `alert_state` (rows locked while evaluated), so workers that receive
  readings of the same device agree; the partial unique index on alerts keeps one open
  alert per rule and device whatever happens;
- the silence check (silence.py) and webhooks (webhooks.py) run beside it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool, PoolClosed
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from backend.fleet.alerts.rules import REPLAY_WINDOW, RuleSet, State, alert_message, iso, step
from backend.fleet.alerts.silence import SilenceCheck
from backend.fleet.alerts.store import ALERT_COLUMNS, alert_dict, list_rules
from backend.fleet.alerts.webhooks import WebhookSender
from backend.ingest.parsing import Reading
from backend.ingest.sinks import Submission, WriteResult

log = logging.getLogger(__name__)

# Another worker evaluating the same (rule, device) rows, or a dropped connection: worth a retry.
_CONFLICTS = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure, psycopg.OperationalError)

_OPEN_ALERT = f"""
INSERT INTO alerts (rule_id, device_id, metric, alert_type, severity, message, threshold_value, actual_value,
                    triggered_at)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (rule_id, device_id) WHERE NOT is_resolved DO NOTHING
RETURNING {ALERT_COLUMNS}
"""
_AUTO_RESOLVE = f"""
UPDATE alerts SET is_resolved = true, resolved_at = now(), resolved_by = 'auto', resolved_value = %s
WHERE rule_id = %s AND device_id = %s AND NOT is_resolved
RETURNING {ALERT_COLUMNS}
"""
# Rows in one order, so workers evaluating the same devices cannot deadlock.
_ENSURE_STATE = (
    "INSERT INTO alert_state (rule_id, device_id)"
    " SELECT v.r, v.d FROM unnest(%s::bigint[], %s::text[]) AS v(r, d)"
    " JOIN alert_rules ar ON ar.id = v.r ORDER BY 1, 2 ON CONFLICT DO NOTHING")
_LOCK_STATE = (
    "SELECT s.rule_id, s.device_id, s.state, s.since, s.last_ts, s.last_value FROM alert_state s"
    " JOIN unnest(%s::bigint[], %s::text[]) AS v(r, d) ON s.rule_id = v.r AND s.device_id = v.d"
    " ORDER BY s.rule_id, s.device_id FOR UPDATE OF s")
_SAVE_STATE = (
    "UPDATE alert_state s SET state = v.state, since = v.since, last_ts = v.last_ts,"
    " last_value = v.last_value"
    " FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::timestamptz[], %s::timestamptz[],"
    " %s::float8[]) AS v(r, d, state, since, last_ts, last_value)"
    " WHERE s.rule_id = v.r AND s.device_id = v.d")

Key = tuple[int, str]  # (rule id, device id)


class AlertEngine:
    def __init__(self, pool: ConnectionPool, webhooks: WebhookSender, *, silence_check_s: float = 30.0,
                 rules_refresh_s: float = 2.0, replay_window: timedelta = REPLAY_WINDOW,
                 queue_max: int = 10_000, conflict_attempts: int = 3, conflict_delay_s: float = 0.05) -> None:
        self.pool = pool
        self.webhooks = webhooks
        self.rules_refresh_s = rules_refresh_s
        self.replay_window = replay_window
        self.conflict_attempts = conflict_attempts
        self.conflict_delay_s = conflict_delay_s
        self.silence = SilenceCheck(pool, silence_check_s, self._silence_ran)
        self._rules: RuleSet | None = None
        self._rules_at = 0.0
        self._queue: queue.Queue[list[Reading]] = queue.Queue(maxsize=queue_max)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.stats = {"queued": 0, "dropped": 0, "evaluated": 0, "opened": 0, "resolved": 0, "errors": 0,
                      "skipped_replay": 0, "silence_runs": 0}

    # ---- wiring ----

    def start(self) -> None:
        # Rules load lazily on the evaluator thread: a worker booting while the database
        # is down must not wait on it (that delayed its first requests by seconds).
        if self._thread is None:
            self._thread = threading.Thread(target=self._evaluate_loop, name="alert-evaluator", daemon=True)
            self._thread.start()
        self.silence.start()

    def close(self, timeout: float = 5.0) -> None:
        """Evaluate what is queued (up to `timeout`), then stop the threads."""
        if self._thread is not None and not self.pool.closed:
            self.drain(timeout)
        self._stop.set()
        self.silence.close()
        try:
            self._queue.put_nowait([])  # wakes the evaluator now rather than at its next poll
        except queue.Full:
            pass
        if self._thread is not None:
            self._thread.join(timeout)

    def reload_rules(self) -> RuleSet:
        rules = RuleSet.of(list_rules(self.pool, enabled_only=True))
        self._rules, self._rules_at = rules, time.monotonic()
        return rules

    # ---- flusher side: cheap ----

    def on_written(self, batch: list[Submission], result: WriteResult) -> None:
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
        """Wait until every queued reading was evaluated (shutdown, tests)."""
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
                self._evaluate_round([r for item in items for r in item])
            except PoolClosed:
                return
            except Exception:  # noqa: BLE001 - one bad round must not stop evaluation
                self.stats["errors"] += 1
                log.exception("alert evaluation failed; %d readings skipped", sum(len(i) for i in items))
            finally:
                for _ in items:
                    self._queue.task_done()

    def _evaluate_round(self, readings: list[Reading]) -> None:
        if not readings:
            return  # the wake-up of close()
        if self._rules is None or time.monotonic() - self._rules_at >= self.rules_refresh_s:
            self._safe_reload()
        retrying = Retrying(
            stop=stop_after_attempt(self.conflict_attempts),
            wait=wait_exponential_jitter(initial=self.conflict_delay_s, max=1.0, jitter=self.conflict_delay_s),
            retry=retry_if_exception_type(_CONFLICTS), reraise=True)
        retrying(self.evaluate, readings)

    def _safe_reload(self) -> None:
        try:
            self.reload_rules()
        except PoolClosed:
            raise
        except Exception as exc:  # noqa: BLE001 - keep the old rules
            log.debug("alert rules reload failed: %s", exc)

    def evaluate(self, readings: list[Reading]) -> tuple[list[dict], list[dict]]:
        """Run readings through the rules that watch them; returns (opened, resolved) alerts."""
        rules = self._rules or self.reload_rules()
        groups: dict[Key, list[tuple[datetime, float]]] = {}
        for r in readings:
            for rule in rules.by_metric.get(r.metric, ()):
                if r.value is not None and (rule.device_id is None or rule.device_id == r.device_id):
                    groups.setdefault((rule.id, r.device_id), []).append((r.ts, r.value))
        if not groups:
            return [], []
        keys = sorted(groups)
        ids = ([k[0] for k in keys], [k[1] for k in keys])
        opened: list[dict] = []
        resolved: list[dict] = []
        with self.pool.connection() as conn, conn.transaction():
            conn.execute(_ENSURE_STATE, ids)
            states = {(r[0], r[1]): State(r[2], r[3], r[4], r[5]) for r in conn.execute(_LOCK_STATE, ids)}
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
                            alert_message(rule, key[1], v), rule.threshold_for(v), v, ts)).fetchone()
                        if row:
                            opened.append(alert_dict(row))
                    elif action == "resolve":
                        resolved.extend(alert_dict(r) for r in conn.execute(_AUTO_RESOLVE, (v, rule.id, key[1])))
                if (st.state, st.since, st.last_ts) != before:
                    changed.append((key, st))
            if changed:
                conn.execute(_SAVE_STATE, (
                    [k[0] for k, _ in changed], [k[1] for k, _ in changed], [s.state for _, s in changed],
                    [s.since for _, s in changed], [s.last_ts for _, s in changed],
                    [s.last_value for _, s in changed]))
        self.stats["evaluated"] += len(readings)
        self.stats["opened"] += len(opened)
        self.stats["resolved"] += len(resolved)
        self._notify(rules, opened, "alert.opened")
        self._notify(rules, resolved, "alert.resolved")
        return opened, resolved

    def _notify(self, rules: RuleSet, alerts: list[dict[str, Any]], event: str) -> None:
        for a in alerts:
            rule = rules.by_id.get(a["rule_id"]) if a["rule_id"] is not None else None
            if rule is not None and rule.webhook_url:
                self.webhooks.submit(rule.webhook_url, {"event": event, "alert": a, "rule": rule.as_dict(),
                                                        "sent_at": iso(datetime.now(UTC))}, a["id"])

    # ---- silence ----

    def run_silence_check(self, force: bool = False) -> tuple[list[dict], list[dict]]:
        """Open/resolve 'silent' alerts now; without `force` only if this worker wins the period's lease."""
        return self.silence.run(force)

    def _silence_ran(self, opened: list[dict], resolved: list[dict]) -> None:
        self.stats["silence_runs"] += 1
        self.stats["opened"] += len(opened)
        self.stats["resolved"] += len(resolved)
        if opened or resolved:
            rules = RuleSet.of(list_rules(self.pool))
            self._notify(rules, opened, "alert.opened")
            self._notify(rules, resolved, "alert.resolved")
