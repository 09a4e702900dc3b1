"""Sink calls with a deadline: the caller stops waiting, the call may still finish later."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, TypeVar

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_random_exponential,
)

from backend.ingest.sinks import Submission, TransientSinkError

T = TypeVar("T")


class WriteTimeout(TransientSinkError):
    """A sink call did not finish within its deadline (it may still finish later)."""


class DeadlineRunner:
    """Runs sink calls on daemon threads so the caller can stop waiting after a deadline.

    A call that overruns keeps its thread until the driver gives up (the pool's and the
    socket's own timeouts); at most `max_threads` such threads exist.
    """

    def __init__(self, max_threads: int = 8, name: str = "sink-call") -> None:
        self.max_threads = max_threads
        self.name = name
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._idle = 0

    def run(self, fn: Callable[..., Any], *args: Any, timeout: float) -> Any:
        fut: Future = Future()
        with self._lock:
            if self._idle == 0 and self._threads < self.max_threads:
                self._threads += 1
                threading.Thread(target=self._work, name=f"{self.name}-{self._threads}", daemon=True).start()
        self._jobs.put((fut, fn, args))
        try:
            return fut.result(timeout=max(0.001, timeout))
        except FutureTimeout:
            fut.cancel()
            raise WriteTimeout(f"{getattr(fn, '__name__', 'sink call')} did not finish within {timeout:.1f}s"
                               " (database slow or unreachable)") from None

    def _work(self) -> None:
        while True:
            with self._lock:
                self._idle += 1
            fut, fn, args = self._jobs.get()
            with self._lock:
                self._idle -= 1
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn(*args))
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller
                fut.set_exception(exc)


def _retryable(exc: BaseException) -> bool:
    # An attempt that ran out of time may still commit: another one would only race it.
    return isinstance(exc, TransientSinkError) and not isinstance(exc, WriteTimeout)


def write_with_retries(runner: DeadlineRunner, write: Callable[[list[Submission]], T], batch: list[Submission], *,
                       attempts: int, within: float, base_delay: float, max_delay: float,
                       before_sleep: Callable[[RetryCallState], None] | None = None) -> T:
    """`write(batch)`, retried on transient errors (tenacity: exponential backoff with full
    jitter) at most `attempts` times, all of them together within `within` seconds, each
    attempt itself bounded by what is left, so a database that hangs cannot hold requests."""
    deadline = time.monotonic() + within

    def attempt() -> T:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise WriteTimeout(f"no time left for another attempt within {within:g}s")
        return runner.run(write, batch, timeout=remaining)

    retrying = Retrying(
        stop=stop_after_attempt(attempts) | stop_after_delay(within),
        wait=wait_random_exponential(multiplier=base_delay, max=max_delay),
        retry=retry_if_exception(_retryable),
        reraise=True,
        before_sleep=before_sleep,
    )
    return retrying(attempt)
