"""`Idempotency-Key` on the HTTP ingest routes: the HTTP side of backend/ingest/idempotency.py.

`with_idempotency(answer)` runs `answer()` at most once per (API key, Idempotency-Key)
within IDEMPOTENCY_TTL_S and answers every re-send with the first status and body (plus
`Idempotent-Replayed: true`). Only final answers are kept: a 5xx ("not stored, retry later")
releases the key, so the retry runs. Concurrent duplicates wait up to IDEMPOTENCY_WAIT_S
for the first one, then get its answer, or 409 while it still runs. The same key with a
different request is 422. Without the header, nothing changes.
"""

from __future__ import annotations

from collections.abc import Callable

from flask import Flask, Response, current_app, request

from backend.api.responses import error_response
from backend.fleet.auth import request_identity
from backend.fleet.auth.keystore import ANONYMOUS_KEY_ID
from backend.ingest.idempotency import (
    Claimed,
    IdempotencyStore,
    IdempotencyUnavailable,
    InFlight,
    InvalidIdempotencyKey,
    Mismatch,
    Replay,
    StoredAnswer,
    check_key,
    fingerprint,
)

HEADER = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"
EXTENSION = "idempotency"
ANONYMOUS_SCOPE = "anonymous"
# The request headers that change what a body means (the fingerprint includes them).
MEANINGFUL_HEADERS = ("Content-Type", "Content-Encoding", "X-Device-Id")

# How an endpoint words its errors: (status, message, retry_after, reason) -> Response.
ErrorAnswer = Callable[[int, str, int | None, str], Response]


def _default_error(status: int, message: str, retry_after: int | None, reason: str) -> Response:
    return error_response(status, message, retry_after, reason=reason)


def init_app(app: Flask, store: IdempotencyStore) -> None:
    app.extensions[EXTENSION] = store


def with_idempotency(answer: Callable[[], Response], error: ErrorAnswer = _default_error) -> Response:
    key = request.headers.get(HEADER)
    length = request.content_length
    if key is None or (length is not None and length > (current_app.config.get("MAX_CONTENT_LENGTH") or length)):
        return answer()  # too large: refused whole (413) by the route, nothing to remember
    try:
        key = check_key(key)
    except InvalidIdempotencyKey as exc:
        return error(400, str(exc), None, "invalid_idempotency_key")
    store: IdempotencyStore = current_app.extensions[EXTENSION]
    ident = request_identity()
    if ident is None or ident.key_id == ANONYMOUS_KEY_ID:
        # Keyless writers (ANONYMOUS_DEVICES) share no key id: one scope per client address.
        scope = f"{ANONYMOUS_SCOPE}:{request.remote_addr}"
    else:
        scope = ident.key_id
    try:
        outcome = store.begin(scope, key, _request_fingerprint())
    except IdempotencyUnavailable:
        return error(503, "cannot check the Idempotency-Key right now (database unreachable); not stored,"
                     " retry later", 5, "idempotency_unavailable")
    if isinstance(outcome, Replay):
        a = outcome.answer
        resp = Response(a.body, status=a.status, content_type=a.content_type or None)
        resp.headers[REPLAYED] = "true"
        return resp
    if isinstance(outcome, InFlight):
        return error(409, "a request with this Idempotency-Key is still being processed; retry later",
                     outcome.retry_after, "idempotency_in_flight")
    if isinstance(outcome, Mismatch):
        return error(422, "this Idempotency-Key was already used for a different request (path, query,"
                     " headers or body) within its lifetime; use a new key", None, "idempotency_key_reused")
    assert isinstance(outcome, Claimed)
    try:
        resp = answer()
    except BaseException:
        store.release(outcome)
        raise
    if resp.status_code >= 500:
        store.release(outcome)
    else:
        store.finish(outcome, StoredAnswer(resp.status_code, resp.get_data(), resp.content_type or ""))
    return resp


def _request_fingerprint() -> bytes:
    parts = [request.method.encode(), request.path.encode(),
             "&".join(sorted(f"{k}={v}" for k, v in request.args.items(multi=True))).encode()]
    parts += [request.headers.get(h, "").encode() for h in MEANINGFUL_HEADERS]
    parts.append(request.get_data(cache=True))  # the body stays cached for the ingest route
    return fingerprint(parts)
