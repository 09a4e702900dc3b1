"""Largest-Triangle-Three-Buckets downsampling (Steinarsson, 2013).

Keeps the first and last point and, from each of n - 2 equal slices of the rest, the point
forming the largest triangle with the point kept before it and the mean of the next
slice: at most n points that keep a chart's peaks and troughs.
"""

from __future__ import annotations

from collections.abc import Sequence


def lttb_indices(xs: Sequence[float], ys: Sequence[float], n: int) -> list[int]:
    """Indices of the kept points (ascending); xs ascending, len(xs) == len(ys)."""
    size = len(xs)
    if n >= size or size <= 2:
        return list(range(size))
    if n <= 1:
        return [0][:n]
    if n == 2:
        return [0, size - 1]
    kept = [0]
    every = (size - 2) / (n - 2)
    a = 0
    for i in range(n - 2):
        lo = int(i * every) + 1
        hi = int((i + 1) * every) + 1
        nlo, nhi = hi, min(int((i + 2) * every) + 1, size)
        if i == n - 3:
            nlo, nhi = size - 1, size
        mx = sum(xs[nlo:nhi]) / (nhi - nlo)
        my = sum(ys[nlo:nhi]) / (nhi - nlo)
        ax, ay = xs[a], ys[a]
        best, best_area = lo, -1.0
        for j in range(lo, hi):
            area = abs((ax - mx) * (ys[j] - ay) - (ax - xs[j]) * (my - ay))
            if area > best_area:
                best, best_area = j, area
        kept.append(best)
        a = best
    kept.append(size - 1)
    return kept
