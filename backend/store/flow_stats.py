"""FluxIO flow statistics (seed 004's get_flow_statistics): flow rate avg/min/max and the volume
that went through, from the totalizer's increase, for one device over a time range, optionally
per hour or day (UTC).

Volume is the sum of the totalizer's steps between consecutive readings in the range, each
step counted in the bucket of its later reading (so the buckets add up to the total). A step
down is a reset or a wrap (the meter restarted counting, or its register overflowed): it is
never negative volume. As with counters in Prometheus, the meter is taken to have restarted
from zero, so that step counts the new reading itself (what it has counted since); the
number of such steps is reported as `totalizer_resets` so an odd meter stands out.

avg is over the readings (not weighted by the time between them), as seed 004 computed it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from psycopg_pool import ConnectionPool

RATE_METRIC = "flow_rate"
TOTAL_METRIC = "totalizer"
BUCKETS = ("hour", "day")

_RATES = """
SELECT {b} AS b, sum(value), min(value), max(value), count(*)
FROM telemetry_readings
WHERE {device} metric = %(rate)s AND ts >= %(start)s AND ts < %(end)s AND value IS NOT NULL
GROUP BY 1
"""
_VOLUME = """
SELECT {b} AS b,
       sum(CASE WHEN prev IS NULL THEN 0 WHEN value >= prev THEN value - prev ELSE value END),
       count(*), count(*) FILTER (WHERE value < prev)
FROM (SELECT ts, value, lag(value) OVER (PARTITION BY device_id ORDER BY ts) AS prev
      FROM telemetry_readings
      WHERE {device} metric = %(total)s AND ts >= %(start)s AND ts < %(end)s
        AND value IS NOT NULL) s
GROUP BY 1
"""


@dataclass
class FlowStats:
    """One bucket's figures, or the whole range's (bucket None)."""

    bucket: datetime | None = None
    rate_sum: float = 0.0
    rate_min: float | None = None
    rate_max: float | None = None
    rate_readings: int = 0
    volume: float | None = None
    totalizer_readings: int = 0
    resets: int = 0

    @property
    def rate_avg(self) -> float | None:
        return self.rate_sum / self.rate_readings if self.rate_readings else None

    def add(self, other: FlowStats) -> None:
        self.rate_sum += other.rate_sum
        self.rate_readings += other.rate_readings
        if other.rate_min is not None:
            self.rate_min = other.rate_min if self.rate_min is None else min(self.rate_min, other.rate_min)
        if other.rate_max is not None:
            self.rate_max = other.rate_max if self.rate_max is None else max(self.rate_max, other.rate_max)
        if other.volume is not None:
            self.volume = (self.volume or 0.0) + other.volume
        self.totalizer_readings += other.totalizer_readings
        self.resets += other.resets


@dataclass
class FlowReport:
    total: FlowStats
    buckets: list[FlowStats] = field(default_factory=list)


def flow_statistics(pool: ConnectionPool, device_id: str | None, start: datetime, end: datetime,
                    bucket: str | None) -> FlowReport:
    """Figures over [start, end) for `device_id` (None: the whole fleet, each meter's volume
    from its own totalizer); per `bucket` ("hour" / "day", UTC) when given."""
    b = f"date_trunc('{bucket}', ts, 'UTC')" if bucket in BUCKETS else "NULL::timestamptz"
    device = "device_id = %(device)s AND" if device_id is not None else ""
    params = {"device": device_id, "rate": RATE_METRIC, "total": TOTAL_METRIC, "start": start, "end": end}
    by_bucket: dict[datetime | None, FlowStats] = {}
    with pool.connection() as conn:
        for key, s, lo, hi, n in conn.execute(_RATES.format(b=b, device=device), params).fetchall():
            by_bucket.setdefault(key, FlowStats(key)).add(FlowStats(key, s, lo, hi, n))
        for key, vol, n, resets in conn.execute(_VOLUME.format(b=b, device=device), params).fetchall():
            by_bucket.setdefault(key, FlowStats(key)).add(
                FlowStats(key, volume=float(vol), totalizer_readings=n, resets=resets))
    total = FlowStats()
    for stats in by_bucket.values():
        total.add(stats)
    buckets = sorted((s for k, s in by_bucket.items() if k is not None), key=lambda s: s.bucket) if bucket else []
    return FlowReport(total, buckets)
