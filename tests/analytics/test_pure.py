"""Pure analytics modules: LTTB, gap filling, rollup choice, time zones."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backend.analytics.buckets import BucketSpec, grain_fits, zone
from backend.analytics.fill import fill
from backend.analytics.lttb import lttb_indices
from backend.analytics.rollup_choice import RAW, plan
from backend.store.queries import QueryError

T0 = datetime(2026, 3, 28, tzinfo=UTC)


def test_lttb_keeps_the_spike_and_the_trough():
    ys = [0, 0, 0, 10, 0, 0, 0, -10, 0, 0]
    assert lttb_indices(list(range(10)), ys, 4) == [0, 3, 7, 9]


def test_lttb_on_a_sine_keeps_the_extremes():
    import math
    xs = list(range(1000))
    ys = [math.sin(2 * math.pi * x / 250) for x in xs]  # 4 periods: peaks at 62/312/..., troughs at 187/...
    kept = lttb_indices(xs, ys, 40)
    assert len(kept) == 40 and kept[0] == 0 and kept[-1] == 999
    for extreme in (62, 187, 312, 437, 562, 687, 812, 937):
        assert any(abs(k - extreme) <= 13 for k in kept), extreme  # one slice is 25 points wide


def test_lttb_small_inputs_are_unchanged():
    assert lttb_indices([1, 2, 3], [1, 5, 2], 10) == [0, 1, 2]
    assert lttb_indices([1, 2, 3], [1, 5, 2], 2) == [0, 2]
    assert lttb_indices([], [], 5) == []


@given(st.lists(st.floats(-1e6, 1e6), min_size=0, max_size=300), st.integers(2, 400))
def test_lttb_properties(ys, n):
    xs = list(range(len(ys)))
    kept = lttb_indices(xs, ys, n)
    assert len(kept) == min(n, len(ys))
    assert kept == sorted(set(kept))
    if ys:
        assert kept[0] == 0 and kept[-1] == len(ys) - 1


def _b(i: int) -> int:
    return 1_774_656_000 + 60 * i


def test_fill_modes_on_a_known_series():
    buckets = [_b(i) for i in range(6)]
    found = {_b(1): (10.0, 2), _b(4): (40.0, 1)}
    assert [(p.value, p.count) for p in fill(buckets, found, "none")] == [(10.0, 2), (40.0, 1)]
    assert [p.value for p in fill(buckets, found, "null")] == [None, 10.0, None, None, 40.0, None]
    assert [p.value for p in fill(buckets, found, "previous")] == [None, 10.0, 10.0, 10.0, 40.0, 40.0]
    assert [p.value for p in fill(buckets, found, "linear")] == [None, 10.0, 20.0, 30.0, 40.0, None]
    assert [p.count for p in fill(buckets, found, "linear")] == [0, 2, 0, 0, 1, 0]


def test_linear_fill_follows_time_not_position():
    buckets = [0, 23 * 3600, 47 * 3600]  # unequal steps (a DST day)
    out = fill(buckets, {buckets[0]: (0.0, 1), buckets[2]: (47.0, 1)}, "linear")
    assert out[1].value == pytest.approx(23.0)


def _covers(segments, start, end):
    assert segments[0].start == start and segments[-1].end == end
    for a, b in zip(segments, segments[1:], strict=False):
        assert a.end == b.start


@given(st.integers(0, 400 * 86400 * 10**6), st.integers(1, 400 * 86400 * 10**6),
       st.sampled_from(["1m", "5m", "1h", "6h", "1d", "1w", "1mo", "10s"]))
@settings(max_examples=300)
def test_plan_covers_the_range_with_aligned_segments(a_us, len_us, bucket):
    start = T0 + timedelta(microseconds=a_us)
    end = start + timedelta(microseconds=len_us)
    p = plan(BucketSpec(bucket), start, end)
    _covers(p.segments, start, end)
    grain = {"rollup_1m": 60, "rollup_1h": 3600, "rollup_1d": 86400}
    for s in p.segments:
        if s.source != RAW:
            g = timedelta(seconds=grain[s.source])
            assert (s.start - T0) % g == timedelta(0) and (s.end - T0) % g == timedelta(0)
        elif bucket != "10s":  # 10 s buckets do not line up with any rollup: all raw
            # Raw only at the ragged edges: under a minute each, or the whole range when no
            # whole minute fits in it.
            assert s.end - s.start < timedelta(minutes=1 if len(p.segments) > 1 else 2)
    assert plan(BucketSpec(bucket), start, end, allow_rollups=False).source == RAW


def test_plan_picks_the_coarsest_rollup_that_lines_up():
    end = datetime(2026, 11, 23, 10, 17, 3, 250000, tzinfo=UTC)
    assert plan(BucketSpec("1m"), end - timedelta(hours=24), end).source == "rollup_1m"
    assert plan(BucketSpec("1h"), end - timedelta(days=30), end).source == "rollup_1h"
    assert plan(BucketSpec("1d"), end - timedelta(days=365), end).source == "rollup_1d"
    assert plan(BucketSpec("10s"), end - timedelta(hours=1), end).source == RAW
    # Berlin's midnights are on UTC hours, India's on half hours.
    assert plan(BucketSpec("1d", "Europe/Berlin"), end - timedelta(days=365), end).source == "rollup_1h"
    assert plan(BucketSpec("1d", "Asia/Kolkata"), end - timedelta(days=30), end).source == "rollup_1m"
    assert plan(BucketSpec("1d", "Asia/Kathmandu"), end - timedelta(days=30), end).source == "rollup_1m"
    assert plan(BucketSpec("1d", "Europe/Berlin"), datetime(1850, 1, 1, tzinfo=UTC),
                datetime(1851, 1, 1, tzinfo=UTC)).source == RAW  # local mean time: +00:53:28


def test_grain_fits():
    assert grain_fits(BucketSpec("6h"), 3600, T0, T0) and not grain_fits(BucketSpec("6h"), 86400, T0, T0)
    assert not grain_fits(BucketSpec("1d", "America/St_Johns"), 3600, T0, T0 + timedelta(days=1))


@pytest.mark.parametrize("name", ["Mars/Olympus", "", "../etc/passwd", "/etc/localtime", "Europe/Berlin\n"])
def test_unknown_zone_names_the_parameter(name):
    with pytest.raises(QueryError, match="^tz: "):
        zone(name)
    assert zone("Europe/Berlin").key == "Europe/Berlin"
