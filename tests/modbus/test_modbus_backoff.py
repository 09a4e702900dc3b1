"""The edge program's backoff: tenacity's exponential wait plus jitter, within its knobs."""

from __future__ import annotations

from backend.modbus.backoff import JITTER, Backoff
from backend.modbus.poller import _backoff


def test_exponential_from_low_capped_at_high_with_jitter():
    b = Backoff(1.0, 10.0)
    for n, base in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 10.0), (40, 10.0)]:
        delays = [b.delay(n) for _ in range(50)]
        assert all(base <= d <= base + JITTER for d in delays), (n, min(delays), max(delays))
        assert len(set(delays)) > 1  # gateways restarted together do not retry in step
    assert Backoff(5.0, 2.0).delay(3) >= 5.0  # a cap below the base never shortens the base


def test_the_poller_backoff_has_jitter():
    delays = {_backoff(0.5, 30.0, 3) for _ in range(20)}
    assert len(delays) > 1 and all(2.0 <= d <= 2.0 + JITTER * 0.5 for d in delays)
