"""Rate limits per API key and per client IP, shared through Redis.

Two budgets, each one bucket across all endpoints, and each request is counted by one:
- per key (RATE_LIMIT_DEFAULT, e.g. `6000/minute`) for requests with a valid key: one noisy
  gateway gets 429 while every other key keeps its own budget, and many gateways behind one
  NAT (or a benchmark on one machine) are not throttled together;
- per client IP (RATE_LIMIT_IP) for requests without a valid key (public endpoints, missing,
  wrong or revoked keys), so guessing keys or flooding without one is bounded.
ADMIN_API_KEY (the operator's key, also used by tests and benchmarks) is exempt, and so is
`/health` (EXEMPT_ENDPOINTS): a load balancer probing it must never be limited into marking
the service down, nor spend the budget of the clients behind the same address. An empty
limit string disables that limit.

With REDIS_URL the counters live in Redis and every worker and instance shares them;
without it each worker counts for itself (the limit then applies per worker). If Redis
stops answering, the worker counts in memory for a few seconds and then tries Redis again,
rather than failing requests.

The counting is `limits` (the library Flask-Limiter is built on), called directly from the
auth hook: fixed windows, one INCR per request. Flask-Limiter's own before_request
machinery (route and exemption resolution on every request) measured 130-260 us per
request on this machine against about 4 us for the counter itself in memory and one Redis
round trip (~110 us) with REDIS_URL, so the hot path skips it.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass

from limits import RateLimitItem, parse
from limits.storage import MemoryStorage, storage_from_string
from limits.strategies import FixedWindowRateLimiter

from backend.config import Config

log = logging.getLogger(__name__)
NAMESPACE = "telemetry"
REDIS_RETRY_S = 5.0
# Checked here (callers pass the endpoint) rather than in each caller, so no path of the
# auth hook can count them.
EXEMPT_ENDPOINTS = frozenset({"health.health"})


@dataclass(frozen=True)
class Decision:
    """Whether a request may go on; when not, which limit it hit and when to come back.

    The HTTP answer (429 + Retry-After) is built by the auth hook (fleet/auth/hooks.py).
    """

    allowed: bool
    limit: str = ""  # e.g. "6000 per 1 minute"
    budget: str = ""  # "key" or "ip"
    retry_after: int = 0


ALLOWED = Decision(True)


class RateLimits:
    def __init__(self, per_key: str, per_ip: str, redis_url: str = "") -> None:
        self.per_key: RateLimitItem | None = parse(per_key) if per_key else None
        self.per_ip: RateLimitItem | None = parse(per_ip) if per_ip else None
        self.memory = FixedWindowRateLimiter(MemoryStorage())
        self.shared = None
        if redis_url:
            self.shared = FixedWindowRateLimiter(storage_from_string(
                redis_url, socket_timeout=0.5, socket_connect_timeout=0.5))
        self._redis_down_until = 0.0
        self._lock = threading.Lock()
        self.stats = {"limited": 0, "redis_errors": 0}

    @property
    def enabled(self) -> bool:
        return self.per_key is not None or self.per_ip is not None

    def check_key(self, key_id: str, endpoint: str | None = None) -> Decision:
        if self.per_key is None or endpoint in EXEMPT_ENDPOINTS:
            return ALLOWED
        return self._check(self.per_key, "key", key_id)

    def check_ip(self, address: str | None, endpoint: str | None = None) -> Decision:
        if self.per_ip is None or endpoint in EXEMPT_ENDPOINTS:
            return ALLOWED
        return self._check(self.per_ip, "ip", address or "unknown")

    def _limiter(self) -> FixedWindowRateLimiter:
        if self.shared is not None and time.monotonic() >= self._redis_down_until:
            return self.shared
        return self.memory

    def _check(self, item: RateLimitItem, budget: str, who: str) -> Decision:
        bucket = f"{budget}:{who}"
        limiter = self._limiter()
        try:
            allowed = limiter.hit(item, NAMESPACE, bucket)
        except Exception as exc:  # noqa: BLE001 - Redis down: count here for a while
            with self._lock:
                self._redis_down_until = time.monotonic() + REDIS_RETRY_S
                self.stats["redis_errors"] += 1
            log.warning("rate-limit storage unreachable (%s); counting in memory for %.0f s",
                        type(exc).__name__, REDIS_RETRY_S)
            limiter = self.memory
            allowed = limiter.hit(item, NAMESPACE, bucket)
        if allowed:
            return ALLOWED
        self.stats["limited"] += 1
        retry_after = 1
        try:
            reset_at, _remaining = limiter.get_window_stats(item, NAMESPACE, bucket)
            retry_after = max(1, math.ceil(reset_at - time.time()))
        except Exception:  # noqa: BLE001 - 1 s is a safe hint
            pass
        return Decision(False, str(item), budget, retry_after)


def make_rate_limits(cfg: Config) -> RateLimits:
    return RateLimits(cfg.rate_limit_default, cfg.rate_limit_ip, cfg.redis_url)
