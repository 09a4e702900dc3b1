"""Gap filling of one series of buckets: fill=none|null|previous|linear."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

FILLS = ("none", "null", "previous", "linear")


@dataclass(frozen=True)
class Point:
    bucket: int  # start, epoch seconds
    value: float | None
    count: int  # readings in the bucket; 0 for a filled one


def fill(buckets: Sequence[int], found: dict[int, tuple[float | None, int]], mode: str) -> list[Point]:
    """Every bucket of `buckets` (sorted) for null/previous/linear; only those found for none.

    previous: the last value before (none before the first found bucket: null);
    linear: interpolated in time between the found neighbours (null outside them).
    """
    if mode == "none":
        return [Point(b, *found[b]) for b in buckets if b in found]
    out = [Point(b, *found.get(b, (None, 0))) for b in buckets]
    if mode == "null":
        return out
    if mode == "previous":
        last: float | None = None
        for i, p in enumerate(out):
            if p.value is not None:
                last = p.value
            else:
                out[i] = Point(p.bucket, last, 0)
        return out
    if mode == "linear":
        known = [i for i, p in enumerate(out) if p.value is not None]
        for a, b in zip(known, known[1:], strict=False):
            if b - a < 2:
                continue
            pa, pb = out[a], out[b]
            span = pb.bucket - pa.bucket
            for i in range(a + 1, b):
                f = (out[i].bucket - pa.bucket) / span
                out[i] = Point(out[i].bucket, pa.value + (pb.value - pa.value) * f, 0)  # type: ignore[operator]
        return out
    raise ValueError(f"fill: {mode!r} is not one of {', '.join(FILLS)}")
