"""A connection pool view for request-path helpers (the field catalogue), behind the circuit."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from backend.ingest.circuit import CircuitBreaker


class GuardedPool:
    """While the circuit is open it fails at once instead of waiting for a connection that
    cannot come; otherwise it caps the wait, so a request is never held by the pool. A
    failure to get any connection at all (the pool has none) opens the circuit, so a
    worker that boots during an outage finds out with its first request.
    """

    def __init__(self, pool: ConnectionPool, circuit: CircuitBreaker, max_wait: float = 2.0) -> None:
        self._pool = pool
        self._circuit = circuit
        self._max_wait = max_wait

    @contextmanager
    def connection(self, timeout: float | None = None, **kw: Any) -> Iterator[psycopg.Connection]:
        if self._circuit.is_open:
            raise psycopg.OperationalError("database known to be unreachable (circuit open)")
        cm = self._pool.connection(timeout=min(timeout or self._max_wait, self._max_wait), **kw)
        try:
            conn = cm.__enter__()
        except psycopg.OperationalError as exc:
            if self._pool.get_stats().get("pool_size", 1) == 0:
                self._circuit.open(f"no database connection: {exc}")
            raise
        try:
            yield conn
        except BaseException:
            if not cm.__exit__(*sys.exc_info()):
                raise
        else:
            cm.__exit__(None, None, None)

