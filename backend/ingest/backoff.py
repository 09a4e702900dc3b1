"""Backoff schedules from tenacity's wait strategies, for loops that are not a single call.

The circuit probe and the replayer's error backoff wait between attempts of a loop that
also has to wake up for other reasons (shutdown, the circuit closing), so they cannot be
wrapped in `tenacity.Retrying`; they ask the same strategies for the delay of attempt n.
"""

from __future__ import annotations

from tenacity import RetryCallState, wait_exponential, wait_random_exponential
from tenacity.wait import wait_base


def equal_jitter(base: float, cap: float) -> wait_base:
    """Exponential backoff with "equal" jitter and a cap: uniform in [top/2, top],
    top = min(cap, base * 2**n). Half fixed, so the delays grow; half random, so workers
    that failed together do not retry together."""
    return (wait_exponential(multiplier=base / 2, max=cap / 2)
            + wait_random_exponential(multiplier=base / 2, max=cap / 2))


def delay_top(base: float, cap: float, attempt: int) -> float:
    """The upper bound of attempt `attempt` (0-based) of `equal_jitter(base, cap)`."""
    return 2 * wait_exponential(multiplier=base / 2, max=cap / 2)(_state(attempt))


def delay(wait: wait_base, attempt: int) -> float:
    """The delay before attempt `attempt` (0-based) according to `wait`."""
    return wait(_state(attempt))


def _state(attempt: int) -> RetryCallState:
    state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
    state.attempt_number = min(attempt, 60) + 1
    return state
