"""An aggregate's rows as series: gap filling and downsampling per (device, metric)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from backend.analytics.fill import Point, fill
from backend.analytics.lttb import lttb_indices

SeriesKey = tuple[str | None, str]  # (device_id or None fleet-wide, metric)


def shape(rows: Iterable[tuple[int, str | None, str, float | None, int]], keys: Iterable[SeriesKey],
          buckets: Sequence[int] | None, mode: str, downsample: int | None
          ) -> list[tuple[SeriesKey, list[Point]]]:
    """Rows (bucket epoch s, device, metric, value, count) -> series sorted by key, points by bucket.

    `keys` are series to show even without rows (the devices and metrics asked for), which
    gap filling turns into all-null (or all-filled) series. Downsampling keeps at most N
    non-null points per series (LTTB); null points are dropped then, as a chart draws none.
    """
    found: dict[SeriesKey, dict[int, tuple[float | None, int]]] = {k: {} for k in keys}
    for b, d, m, v, c in rows:
        found.setdefault((d, m), {})[b] = (v, c)
    out = []
    for key in sorted(found, key=lambda k: (k[0] or "", k[1])):
        pts_by_bucket = found[key]
        points = fill(buckets if buckets is not None and mode != "none" else sorted(pts_by_bucket),
                      pts_by_bucket, mode)
        if downsample is not None:
            points = downsample_points(points, downsample)
        out.append((key, points))
    return out


def downsample_points(points: list[Point], n: int) -> list[Point]:
    kept = [p for p in points if p.value is not None]
    xs = [float(p.bucket) for p in kept]
    ys = [float(p.value) for p in kept]  # type: ignore[arg-type]
    return [kept[i] for i in lttb_indices(xs, ys, n)]
