"""Seed 002's five signals as pure functions of time (and of a random source where seed 002
has randomness), so a run is reproducible from its seed and each function is testable alone."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

SINE_HZ, SINE_AMPLITUDE = 0.1, 10.0
COSINE_HZ, COSINE_AMPLITUDE = 0.15, 8.0
NOISE_AMPLITUDE = 5.0
WALK_STEP = 0.5
DAMPED_AMPLITUDE, DAMPED_DECAY = 15.0, 0.01
# Seed 002 gives no frequency for the damped oscillation; 0.2 Hz shows several swings a minute.
DAMPED_HZ = 0.2
NAMES = ("sine_wave", "cosine_wave", "random_noise", "random_walk", "damped_oscillation")


def sine(t: float, hz: float = SINE_HZ, amplitude: float = SINE_AMPLITUDE, offset: float = 0.0) -> float:
    return amplitude * math.sin(2 * math.pi * hz * t) + offset


def cosine(t: float, hz: float = COSINE_HZ, amplitude: float = COSINE_AMPLITUDE, offset: float = 0.0) -> float:
    return amplitude * math.cos(2 * math.pi * hz * t) + offset


def noise(rng: random.Random, amplitude: float = NOISE_AMPLITUDE) -> float:
    """Uniform in [-amplitude, amplitude]."""
    return rng.uniform(-amplitude, amplitude)


def walk_step(previous: float, rng: random.Random, step: float = WALK_STEP) -> float:
    """The random walk's next value: the previous one plus a uniform step in [-step, step]."""
    return previous + rng.uniform(-step, step)


def damped(t: float, amplitude: float = DAMPED_AMPLITUDE, decay: float = DAMPED_DECAY,
           hz: float = DAMPED_HZ) -> float:
    """A * e^(-decay*t) * sin(2π f t): a transient that dies away."""
    return amplitude * math.exp(-decay * t) * math.sin(2 * math.pi * hz * t)


@dataclass
class Device:
    """One simulated device: its own random source, walk position and phase."""

    device_id: str
    rng: random.Random
    phase_s: float = 0.0  # devices are offset in time so their curves do not overlap
    walk: float = 0.0

    def sample(self, t: float, damped_restart_s: float = 0.0) -> dict[str, float]:
        """The five signals at `t` seconds since the producer started."""
        self.walk = walk_step(self.walk, self.rng)
        td = t % damped_restart_s if damped_restart_s > 0 else t
        return {
            "sine_wave": sine(t + self.phase_s),
            "cosine_wave": cosine(t + self.phase_s),
            "random_noise": noise(self.rng),
            "random_walk": self.walk,
            "damped_oscillation": damped(td),
        }


def fleet(count: int, prefix: str = "sim-", seed: int | None = None) -> list[Device]:
    """`count` devices named prefix1..prefixN, reproducible when `seed` is given."""
    master = random.Random(seed)
    return [Device(f"{prefix}{i}", random.Random(master.random()), phase_s=i * 1.7) for i in range(1, count + 1)]
