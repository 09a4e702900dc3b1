"""Idempotency keys for any transport: the same key within the TTL gets the first answer.

A client that re-sends after a lost answer sends the same key; readings with a device time
are deduplicated by the unique key on (device, metric, ts) anyway, but readings the server
timed would be stored twice. The store makes the whole request a no-op instead:

    outcome = store.begin(scope, key, fingerprint)
    Claimed  -> run the request, then store.finish(claim, answer) (or store.release(claim)
                when the answer is "not stored, retry later": a retry must run again)
    Replay   -> answer with outcome.answer, store nothing
    InFlight -> the first request with this key is still running after `wait_s`: say so (409)
    Mismatch -> the key was used for a different request: refuse (422)

`scope` separates tenants (the API key's id), `fingerprint` is the transport's digest of what
was asked (HTTP: method, path, query, content headers, body). Concurrent duplicates: the
INSERT ... ON CONFLICT claims a key for exactly one request; the others poll the row until
it is done (then replay it) or `wait_s` passes (then InFlight). A claim whose owner died is
taken over once its lease (longer than any request may run) has passed.

Rows live in PostgreSQL (migrations/0030_idempotency_keys.sql); a background thread deletes
the expired ones. When the database cannot be reached, begin() raises
IdempotencyUnavailable: without the store a keyed request cannot promise to be a no-op.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import psycopg
from psycopg_pool import ConnectionPool, PoolClosed

log = logging.getLogger(__name__)

MAX_KEY_LEN = 255


@dataclass(frozen=True)
class StoredAnswer:
    status: int
    body: bytes
    content_type: str


@dataclass(frozen=True)
class Claimed:
    scope: str
    key: str
    owner: uuid.UUID


@dataclass(frozen=True)
class Replay:
    answer: StoredAnswer


@dataclass(frozen=True)
class InFlight:
    retry_after: int


@dataclass(frozen=True)
class Mismatch:
    pass


Outcome = Claimed | Replay | InFlight | Mismatch


class IdempotencyUnavailable(RuntimeError):
    """The store cannot be read or written now (database unreachable)."""


class InvalidIdempotencyKey(ValueError):
    """The key itself is unusable; the message says why."""


def check_key(key: str) -> str:
    if not key or len(key) > MAX_KEY_LEN:
        raise InvalidIdempotencyKey(f"Idempotency-Key: 1 to {MAX_KEY_LEN} characters")
    if not all(" " <= c <= "~" for c in key):
        raise InvalidIdempotencyKey("Idempotency-Key: printable ASCII only")
    return key


def fingerprint(parts: Iterable[bytes]) -> bytes:
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "big"))  # length-prefixed: ("ab", "c") != ("a", "bc")
        h.update(part)
    return h.digest()


_CLAIM = """
INSERT INTO idempotency_keys AS k (scope, idem_key, fingerprint, state, owner, lease_until, expires_at)
VALUES (%(scope)s, %(key)s, %(fp)s, 'in_flight', %(owner)s, now() + %(lease)s * interval '1 second',
        now() + %(ttl)s * interval '1 second')
ON CONFLICT (scope, idem_key) DO UPDATE
   SET fingerprint = EXCLUDED.fingerprint, state = 'in_flight', owner = EXCLUDED.owner,
       lease_until = EXCLUDED.lease_until, expires_at = EXCLUDED.expires_at, created_at = now(),
       status = NULL, content_type = NULL, body = NULL
 WHERE k.expires_at <= now() OR (k.state = 'in_flight' AND k.lease_until <= now())
RETURNING owner
"""
_READ = ("SELECT state, fingerprint, status, content_type, body FROM idempotency_keys"
         " WHERE scope = %s AND idem_key = %s AND expires_at > now()")
_FINISH = ("UPDATE idempotency_keys SET state = 'done', status = %s, content_type = %s, body = %s"
           " WHERE scope = %s AND idem_key = %s AND owner = %s")
_RELEASE = "DELETE FROM idempotency_keys WHERE scope = %s AND idem_key = %s AND owner = %s"
_PURGE = ("DELETE FROM idempotency_keys WHERE ctid IN"
          " (SELECT ctid FROM idempotency_keys WHERE expires_at <= now() LIMIT %s)")


class IdempotencyStore:
    def __init__(self, pool: ConnectionPool, available: Callable[[], bool], ttl_s: float = 86_400.0,
                 wait_s: float = 10.0, lease_s: float = 60.0, poll_s: float = 0.05,
                 purge_every_s: float = 600.0) -> None:
        self.pool = pool
        self.available = available  # false while the write path knows the database is down
        self.ttl_s = ttl_s
        self.wait_s = wait_s
        self.lease_s = lease_s
        self.poll_s = poll_s
        self.purge_every_s = purge_every_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def begin(self, scope: str, key: str, fp: bytes) -> Outcome:
        owner = uuid.uuid4()
        deadline = time.monotonic() + self.wait_s
        params = {"scope": scope, "key": key, "fp": fp, "owner": owner, "lease": self.lease_s, "ttl": self.ttl_s}
        while True:
            row, existing = self._claim_or_read(params)
            if row is not None:
                return Claimed(scope, key, owner)
            if existing is None:
                continue  # released or expired between the two statements: claim again
            state, stored_fp, status, content_type, body = existing
            if bytes(stored_fp) != fp:
                return Mismatch()
            if state == "done":
                return Replay(StoredAnswer(status, bytes(body or b""), content_type or ""))
            if time.monotonic() >= deadline:
                return InFlight(retry_after=1)
            time.sleep(self.poll_s)

    def _claim_or_read(self, params: dict[str, object]) -> tuple[tuple | None, tuple | None]:
        if not self.available():
            raise IdempotencyUnavailable("database known to be unreachable")
        try:
            with self.pool.connection(timeout=2.0) as conn:
                row = conn.execute(_CLAIM, params).fetchone()
                if row is not None and row[0] == params["owner"]:
                    return row, None
                return None, conn.execute(_READ, (params["scope"], params["key"])).fetchone()
        except (psycopg.Error, PoolClosed, TimeoutError) as exc:
            raise IdempotencyUnavailable(type(exc).__name__) from exc

    def finish(self, claim: Claimed, answer: StoredAnswer) -> None:
        """Keep `answer` as the one every re-send with this key gets."""
        self._write(_FINISH, (answer.status, answer.content_type, answer.body, claim.scope, claim.key, claim.owner))

    def release(self, claim: Claimed) -> None:
        """Forget the claim: the request was not carried out, so a retry must run it."""
        self._write(_RELEASE, (claim.scope, claim.key, claim.owner))

    def _write(self, stmt: str, params: tuple) -> None:
        try:
            with self.pool.connection(timeout=5.0) as conn:
                conn.execute(stmt, params)
        except (psycopg.Error, PoolClosed, TimeoutError) as exc:
            # The claim stays in flight until its lease passes; a re-send then runs again
            # (readings with a device time are still deduplicated by their key).
            log.warning("idempotency: could not record the answer for key %r: %s", params[-2], exc)

    def purge_expired(self, batch: int = 10_000) -> int:
        total = 0
        with self.pool.connection(timeout=5.0) as conn:
            while True:
                n = conn.execute(_PURGE, (batch,)).rowcount
                total += n
                if n < batch:
                    return total

    # ---- the expiry sweep --------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._sweep, name="idempotency-sweep", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()

    def _sweep(self) -> None:
        while not self._stop.wait(self.purge_every_s):
            try:
                n = self.purge_expired()
                if n:
                    log.info("idempotency: deleted %d expired keys", n)
            except PoolClosed:
                return
            except (psycopg.Error, TimeoutError) as exc:
                log.warning("idempotency: expiry sweep failed: %s", exc)
