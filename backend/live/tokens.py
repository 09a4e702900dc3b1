"""Short-lived signed stream tokens: what a browser's EventSource puts in the URL instead of a key.

`v1.<key id>.<expiry, unix s>.<HMAC-SHA256>`: bound to the API key's id, valid for
STREAM_TOKEN_TTL_S seconds, checked by the stream process with the shared secret (the
STREAM_TOKEN_SECRET setting, else the one the database holds: migrations/0040). The key
itself never appears in a URL or a log line.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from dataclasses import dataclass

VERSION = "v1"
_KEY_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")


class TokenError(ValueError):
    """A token that is malformed, forged or expired; the message says which."""


@dataclass(frozen=True, slots=True)
class StreamGrant:
    key_id: str
    expires_at: int


class StreamTokens:
    def __init__(self, secret: str, ttl_s: int) -> None:
        if len(secret) < 16:
            raise ValueError("the stream token secret must have at least 16 characters")
        self._secret = secret.encode()
        self.ttl_s = ttl_s

    def issue(self, key_id: str, now: float | None = None) -> str:
        if not _KEY_ID.match(key_id):
            raise ValueError(f"key id {key_id!r} cannot be put in a token")
        exp = int((time.time() if now is None else now) + self.ttl_s)
        body = f"{VERSION}.{key_id}.{exp}"
        return f"{body}.{self._sign(body)}"

    def verify(self, token: str, now: float | None = None) -> StreamGrant:
        parts = token.split(".")
        if len(parts) < 4 or parts[0] != VERSION:
            raise TokenError("malformed stream token")
        sig, exp_s = parts[-1], parts[-2]
        key_id = ".".join(parts[1:-2])
        body = f"{VERSION}.{key_id}.{exp_s}"
        if not hmac.compare_digest(sig, self._sign(body)):
            raise TokenError("stream token signature does not match")
        if not exp_s.isdigit():
            raise TokenError("malformed stream token")
        exp = int(exp_s)
        if exp < (time.time() if now is None else now):
            raise TokenError("stream token expired; ask POST /api/stream/token for a new one")
        return StreamGrant(key_id, exp)

    def _sign(self, body: str) -> str:
        mac = hmac.new(self._secret, body.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()
