"""POSTs the producer's messages with exponential backoff (tenacity).

Retried: connection errors, timeouts, 429 and 5xx (the service asks for a retry with those,
Retry-After included). Not retried: other 4xx, which a resend cannot fix; they are logged
with the service's own explanation.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import requests
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_exponential

log = logging.getLogger(__name__)
RETRY_STATUSES = {408, 425, 429, 500, 502, 503, 504}


class Retryable(Exception):
    """An answer that asks for a retry (429/5xx)."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"HTTP {status}: {text[:200]}")
        self.status = status


class Refused(Exception):
    """A 4xx that a resend cannot fix."""


@dataclass(frozen=True)
class SendResult:
    status: int
    attempts: int
    accepted: int


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, (Retryable, requests.ConnectionError, requests.Timeout))


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    delay = state.next_action.sleep if state.next_action else 0.0
    log.warning("send failed (%s); attempt %d, retrying in %.1f s", exc, state.attempt_number, delay)


class Sender:
    def __init__(self, base_url: str, api_key: str | None, max_attempts: int = 8, base_delay: float = 0.5,
                 max_delay: float = 30.0, timeout: float = 10.0, session: requests.Session | None = None) -> None:
        self.url = base_url.rstrip("/") + "/api/telemetry"
        self.session = session or requests.Session()
        if api_key:
            self.session.headers["X-API-Key"] = api_key
        self.timeout = timeout
        self._retrying = Retrying(
            retry=retry_if_exception(_retryable), stop=stop_after_attempt(max_attempts),
            wait=wait_exponential(multiplier=base_delay, max=max_delay), before_sleep=_log_retry, reraise=True)

    def send(self, body: dict | list, device_id: str | None = None) -> SendResult:
        """POST one message ({timestamp, signals}, seed 002's shape) or a list of messages."""
        attempts = 0

        def once() -> SendResult:
            nonlocal attempts
            attempts += 1
            params = {"device_id": device_id} if device_id else None
            resp = self.session.post(self.url, json=body, params=params, timeout=self.timeout)
            if resp.status_code in RETRY_STATUSES:
                raise Retryable(resp.status_code, resp.text)
            if resp.status_code >= 400:
                raise Refused(f"HTTP {resp.status_code}: {resp.text[:300]}")
            accepted = resp.json().get("accepted", 0) if resp.content else 0
            return SendResult(resp.status_code, attempts, accepted)

        return self._retrying(once)

    def close(self) -> None:
        self.session.close()
