"""Backoff delays for the edge program's retry loops, from tenacity's wait strategies.

The loops here are not a function call to retry (a poll schedule, a send queue), so they
ask for "the delay before retry n" rather than wrap a call in tenacity.Retrying.
"""

from __future__ import annotations

from tenacity import RetryCallState, wait_exponential, wait_random

# Jitter as a share of the base delay: enough that gateways restarted together (a power cut)
# do not retry in step, small enough that the first retry stays close to the base.
JITTER = 0.5


class Backoff:
    """min(high, low x 2^(n-1)) plus up to JITTER x low: never below `low`, and the jitter is
    added after the cap, so gateways that all reached the cap still spread out."""

    def __init__(self, low: float, high: float) -> None:
        self._wait = wait_exponential(multiplier=low, min=low, max=max(low, high)) + wait_random(0, JITTER * low)

    def delay(self, failures: int) -> float:
        """Seconds to wait after the `failures`-th failure in a row (1 = the first)."""
        state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
        state.attempt_number = max(1, failures)
        return self._wait(state)
