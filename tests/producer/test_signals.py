"""Seed 002's five signals: known values, bounds, and a reproducible fleet."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backend.producer import signals as s

times = st.floats(min_value=0, max_value=1e6, allow_nan=False)


def test_sine_and_cosine_have_seed_002_frequency_and_amplitude():
    # 0.1 Hz: a quarter period is 2.5 s; 0.15 Hz cosine: half a period is 1/0.3 s
    assert s.sine(2.5) == pytest.approx(10.0)
    assert s.sine(7.5) == pytest.approx(-10.0)
    assert s.sine(10.0) == pytest.approx(0.0, abs=1e-9)
    assert s.cosine(0.0) == pytest.approx(8.0)
    assert s.cosine(1 / 0.3) == pytest.approx(-8.0)
    assert s.sine(2.5, offset=3) == pytest.approx(13.0)


@given(times)
def test_periodic_signals_stay_within_their_amplitude(t):
    assert abs(s.sine(t)) <= 10.0 + 1e-9
    assert abs(s.cosine(t)) <= 8.0 + 1e-9


@given(times)
def test_damped_oscillation_stays_under_its_decaying_envelope(t):
    assert abs(s.damped(t)) <= 15.0 * math.exp(-0.01 * t) + 1e-9


def test_damped_oscillation_decays():
    # peaks of sin(2π·0.2·t) are at t = 1.25 + 5k
    assert s.damped(1.25) == pytest.approx(15.0 * math.exp(-0.0125))
    assert s.damped(101.25) == pytest.approx(15.0 * math.exp(-1.0125))
    assert s.damped(101.25) < s.damped(1.25) / 2


@given(st.integers())
def test_noise_is_uniform_within_plus_minus_five(seed):
    rng = random.Random(seed)
    values = [s.noise(rng) for _ in range(200)]
    assert all(-5.0 <= v <= 5.0 for v in values)


def test_noise_covers_its_range():
    rng = random.Random(1)
    values = [s.noise(rng) for _ in range(5000)]
    assert min(values) < -4.9 and max(values) > 4.9
    assert abs(sum(values) / len(values)) < 0.3


@given(st.integers(), st.floats(min_value=-1e6, max_value=1e6))
def test_random_walk_moves_at_most_half_a_unit(seed, start):
    rng = random.Random(seed)
    prev = start
    for _ in range(50):
        nxt = s.walk_step(prev, rng)
        assert abs(nxt - prev) <= 0.5 + 1e-9
        prev = nxt


def test_fleet_is_reproducible_and_devices_differ():
    a = [d.sample(3.0) for d in s.fleet(3, seed=42)]
    b = [d.sample(3.0) for d in s.fleet(3, seed=42)]
    assert a == b
    assert [d.device_id for d in s.fleet(3)] == ["sim-1", "sim-2", "sim-3"]
    assert a[0]["random_noise"] != a[1]["random_noise"]
    assert a[0]["sine_wave"] != a[1]["sine_wave"]  # phase-shifted
    assert set(a[0]) == set(s.NAMES)


def test_damped_restart_starts_the_transient_again():
    d = s.fleet(1, seed=1)[0]
    assert d.sample(601.25, damped_restart_s=600)["damped_oscillation"] == pytest.approx(s.damped(1.25))
    assert d.sample(601.25, damped_restart_s=0)["damped_oscillation"] == pytest.approx(s.damped(601.25))
