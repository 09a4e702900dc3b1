"""Bucket sizes and time zones for /telemetry/aggregate.

Sub-day buckets are fixed intervals counted from 2000-01-01T00:00Z (date_bin), as before.
Day, week (Monday) and month buckets are calendar buckets: they start at local midnight in
the request's time zone (UTC by default), so a Berlin day is 23 or 25 hours long on DST
days. PostgreSQL computes them (date_trunc under the session TimeZone), so labels and gap
filling follow its calendar arithmetic exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from backend.store.queries import QueryError

# name -> seconds for fixed buckets, or the date_trunc unit for calendar ones.
FIXED = {"1s": 1, "10s": 10, "1m": 60, "5m": 300, "15m": 900, "1h": 3600, "6h": 21600}
CALENDAR = {"1d": "day", "1w": "week", "1mo": "month"}
BUCKET_NAMES = (*FIXED, *CALENDAR)
# The shortest a calendar bucket can be (a 23-hour day), to bound how many a range holds.
_CALENDAR_MIN_S = {"day": 23 * 3600, "week": 7 * 86400 - 3600, "month": 28 * 86400 - 3600}
EPOCH_2000 = datetime(2000, 1, 1, tzinfo=UTC)
UTC_NAMES = frozenset({"UTC", "Etc/UTC", "Etc/UCT", "Etc/Universal", "Etc/Zulu", "UCT", "Universal", "Zulu",
                       "Etc/GMT", "GMT", "Etc/Greenwich", "Greenwich", "GMT0", "Etc/GMT0", "Etc/GMT+0",
                       "Etc/GMT-0", "GMT+0", "GMT-0"})


@dataclass(frozen=True)
class BucketSpec:
    name: str
    tz: str = "UTC"

    @property
    def calendar(self) -> str | None:
        """The date_trunc unit of a calendar bucket; None for fixed ones."""
        return CALENDAR.get(self.name)

    @property
    def seconds(self) -> int | None:
        return FIXED.get(self.name)

    @property
    def is_utc(self) -> bool:
        return self.tz in UTC_NAMES

    def approx_count(self, start: datetime, end: datetime) -> float:
        """At most how many buckets [start, end) touches."""
        span = (end - start).total_seconds()
        step = self.seconds or _CALENDAR_MIN_S[self.calendar or "day"]
        return span / step + 2


def zone(name: str) -> ZoneInfo:
    """The IANA zone `name`; QueryError naming `tz` when there is none."""
    if not name or name.startswith(("/", ".")) or ".." in name or len(name) > 64:
        raise QueryError(f"tz: {name[:64]!r} is not an IANA time zone name (for example Europe/Berlin)")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise QueryError(f"tz: {name[:64]!r} is not an IANA time zone name (for example Europe/Berlin)") from None


def utc_offsets(tz: str, start: datetime, end: datetime, samples: int = 4000) -> set[int]:
    """The UTC offsets (seconds) `tz` uses within [start, end], sampled at least every 6 hours.

    Used only to decide which rollup grain lines up with local midnights; offsets change at
    most a few times a year and stay for months, so sampling finds every one in use.
    """
    if tz in UTC_NAMES:
        return {0}
    z = zone(tz)
    span = (end - start).total_seconds()
    step = max(6 * 3600.0, span / samples)
    seen: set[int] = set()
    t = 0.0
    while True:
        at = start + timedelta(seconds=min(t, span))
        off = at.astimezone(z).utcoffset()
        seen.add(int(off.total_seconds()) if off is not None else 0)
        if t >= span:
            return seen
        t += step


def grain_fits(spec: BucketSpec, grain_s: int, start: datetime, end: datetime) -> bool:
    """Does every bucket boundary fall on a multiple of `grain_s` (counted from 2000-01-01Z)?

    Then each rollup row of that grain lies inside one output bucket. Fixed buckets count
    from 2000-01-01Z, a day boundary: the grain must divide the bucket. Calendar buckets
    start at local midnights, on a grain boundary when every UTC offset in use is a multiple
    of the grain (Berlin's +1 h/+2 h: hours yes, UTC days no; India's +5:30: minutes only).
    """
    if spec.seconds is not None:
        return spec.seconds % grain_s == 0
    return all(off % grain_s == 0 for off in utc_offsets(spec.tz, start, end))
