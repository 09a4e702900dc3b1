"""Which source serves which part of an aggregate's range: the rollups or raw rows.

The range [start, end) is cut into segments: the coarsest rollup whose grain lines up with
every output bucket (buckets.grain_fits) covers the whole grain-aligned middle, and the
ragged edges go to the next finer rollup, down to raw rows for the part within a minute
of start or end. Each rollup row then lies wholly inside one output bucket and inside the
range, so summing the segments gives exactly the aggregate over raw rows.

Arithmetic is on integer microseconds, so alignment is exact at any date.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from backend.analytics.buckets import EPOCH_2000, BucketSpec, grain_fits

# Rollup tables by grain, coarsest first (migrations/0020_rollups.sql).
GRAINS = ((86400, "rollup_1d"), (3600, "rollup_1h"), (60, "rollup_1m"))
RAW = "raw"
_US = 1_000_000


@dataclass(frozen=True)
class Segment:
    source: str  # "raw" or a GRAINS name
    start: datetime
    end: datetime


@dataclass(frozen=True)
class Plan:
    segments: tuple[Segment, ...]

    @property
    def source(self) -> str:
        """The coarsest source used: what the answer says it came from."""
        for _, name in GRAINS:
            if any(s.source == name for s in self.segments):
                return name
        return RAW


def _us(ts: datetime) -> int:
    d = ts - EPOCH_2000
    return (d.days * 86400 + d.seconds) * _US + d.microseconds


def _at(us: int) -> datetime:
    return EPOCH_2000 + timedelta(microseconds=us)


def plan(spec: BucketSpec, start: datetime, end: datetime, allow_rollups: bool = True) -> Plan:
    """Segments covering [start, end) in time order."""
    if start >= end:
        return Plan(())
    grains = [(g, n) for g, n in GRAINS if allow_rollups and grain_fits(spec, g, start, end)]
    out: list[Segment] = []

    def cover(lo: int, hi: int, i: int) -> None:
        if lo >= hi:
            return
        if i == len(grains):
            out.append(Segment(RAW, _at(lo), _at(hi)))
            return
        g = grains[i][0] * _US
        a, b = -(-lo // g) * g, hi // g * g
        if a >= b:
            cover(lo, hi, i + 1)
            return
        cover(lo, a, i + 1)
        out.append(Segment(grains[i][1], _at(a), _at(b)))
        cover(b, hi, i + 1)

    cover(_us(start), _us(end), 0)
    return Plan(tuple(out))

