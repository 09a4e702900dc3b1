"""Rate limits per API key and per client IP (flask-limiter), shared through Redis.

Two budgets, each one bucket across all endpoints:
- per key (RATE_LIMIT_DEFAULT, e.g. `6000/minute`): one noisy gateway gets 429 while every
  other key keeps its own budget;
- per client IP (RATE_LIMIT_IP): also counts requests without a valid key, so guessing
  keys or flooding without one is bounded.
ADMIN_API_KEY (the operator's key, also used by tests and benchmarks) is exempt from both.
An empty limit string disables that limit.

With REDIS_URL the counters live in Redis and every worker and instance shares them;
without it each worker counts for itself (the limit then applies per worker). If Redis
stops answering, each worker falls back to memory rather than failing requests.
Fixed windows: one INCR per limit per request, the cheapest strategy Redis offers.
"""

from __future__ import annotations

import math
import time
from typing import Any

from flask import Flask, Response, request
from flask_limiter import Limit, Limiter, RateLimitExceeded

from .api.responses import error_response
from .auth import current_identity


def _client_ip() -> str:
    return "ip:" + (request.remote_addr or "unknown")


def _key_bucket() -> str:
    ident, _status = current_identity()
    return "key:" + ident.key_id if ident is not None else _client_ip()


def _is_master() -> bool:
    ident, _status = current_identity()
    return ident is not None and ident.master


def _no_key_or_master() -> bool:
    # Requests without a valid key are already counted by the IP limit.
    ident, _status = current_identity()
    return ident is None or ident.master


def install_limiter(app: Flask, cfg: Any) -> Limiter | None:
    limits = []
    if cfg.rate_limit_ip:
        limits.append(Limit(cfg.rate_limit_ip, key_function=_client_ip, scope="per-ip", shared=True,
                            exempt_when=_is_master))
    if cfg.rate_limit_default:
        limits.append(Limit(cfg.rate_limit_default, key_function=_key_bucket, scope="per-key", shared=True,
                            exempt_when=_no_key_or_master))
    if not limits:
        return None
    redis = bool(cfg.redis_url)
    limiter = Limiter(
        _client_ip,
        default_limits=limits,
        storage_uri=cfg.redis_url if redis else "memory://",
        storage_options={"socket_connect_timeout": 0.5, "socket_timeout": 0.5} if redis else {},
        strategy="fixed-window",
        headers_enabled=False,  # headers would cost a second storage read on every request
        swallow_errors=True,
        in_memory_fallback_enabled=redis,
        key_prefix="telemetry",
    )
    limiter.init_app(app)

    @app.errorhandler(RateLimitExceeded)
    def _too_many(exc: RateLimitExceeded) -> Response:
        retry_after = 1
        try:
            current = limiter.current_limit
            if current is not None:
                retry_after = max(1, math.ceil(current.window[0] - time.time()))  # window: (reset, remaining)
        except Exception:  # noqa: BLE001 - the storage may be gone; 1 s is a safe hint
            pass
        return error_response(429, f"rate limit exceeded ({exc.description}); retry after {retry_after} s",
                              retry_after=retry_after)

    app.extensions["fleet_limiter"] = limiter
    return limiter
