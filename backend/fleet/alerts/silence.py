"""Silence: a `silent` rule opens an alert for a device that sent nothing for its duration.

The check runs every ALERT_SILENCE_CHECK_S on whichever worker wins this period's lease row
in `fleet_jobs`, so once across all workers however many there are.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable

from psycopg_pool import ConnectionPool, PoolClosed

from backend.fleet.alerts.store import ALERT_COLUMNS, alert_dict

log = logging.getLogger(__name__)

# Called after each check this worker ran: (opened, resolved) alerts.
SilenceObserver = Callable[[list[dict], list[dict]], None]

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
RETURNING {ALERT_COLUMNS}
"""
_SILENCE_RESOLVE = """
UPDATE alerts a SET is_resolved = true, resolved_at = now(), resolved_by = 'auto'
FROM alert_rules r, devices d
WHERE a.rule_id = r.id AND d.device_id = a.device_id AND NOT a.is_resolved
  AND r.rule_type = 'silent' AND r.auto_resolve
  AND d.last_seen >= now() - make_interval(secs => r.duration_s)
RETURNING {cols}
""".format(cols=", ".join("a." + c.strip() for c in ALERT_COLUMNS.split(",")))


class SilenceCheck:
    """The periodic check, on one background thread per worker."""

    def __init__(self, pool: ConnectionPool, period_s: float, on_run: SilenceObserver) -> None:
        self.pool = pool
        self.period_s = period_s
        self.on_run = on_run
        self.owner = uuid.uuid4().hex[:8]  # this worker, in the lease row
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="alert-silence", daemon=True)
            self._thread.start()

    def close(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def run(self, force: bool = False) -> tuple[list[dict], list[dict]]:
        """Open/resolve 'silent' alerts; without `force` only if this worker wins this period's lease."""
        with self.pool.connection() as conn, conn.transaction():
            if not force:
                won = conn.execute(_LEASE, ("alert_silence", self.owner, self.period_s * 0.9)).fetchone()
                if not won:
                    return [], []
            opened = [alert_dict(r) for r in conn.execute(_SILENCE_OPEN)]
            resolved = [alert_dict(r) for r in conn.execute(_SILENCE_RESOLVE)]
        self.on_run(opened, resolved)
        return opened, resolved

    def _loop(self) -> None:
        while not self._stop.wait(self.period_s):
            if self.pool.closed:
                return
            try:
                self.run()
            except PoolClosed:
                return
            except Exception as exc:  # noqa: BLE001 - try again next period
                log.warning("silence check failed: %s", exc)
