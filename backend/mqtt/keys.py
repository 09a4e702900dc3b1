"""A ThingsBoard device's key, named in its topic, -> the one device that key may write.

ThingsBoard's device access token is bound to one device; here that is an API key whose
`devices` list holds exactly one device id (`python -m backend keys create --devices X`).
The topic carries the key's id (`k_...`, not secret: it is safe in a broker's topic tree)
or, where a broker rewrites topics with the MQTT username, the token itself (`tk_...`,
looked up by its SHA-256 as the HTTP side does). Answers are cached briefly so a busy
device costs one lookup per TTL, and a revoked key stops within that TTL.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass

from psycopg_pool import ConnectionPool

from backend.fleet.auth.keys import KEY_PREFIX, hash_key

TTL_S = 10.0
# What a topic level may hold to be looked up at all: a key id, or a token (keys.generate_key).
REF_RE = re.compile(r"\A(k_[0-9a-f]{1,32}|tk_[A-Za-z0-9_\-]{20,80})\Z")


class KeyRefused(ValueError):
    """The key cannot write through this topic; the message says why (never shows a token)."""


@dataclass(frozen=True)
class DeviceKey:
    key_id: str
    device: str


def device_of_key(row: tuple | None, shown: str) -> DeviceKey:
    """The device of one api_keys row (id, scopes, devices, usable), or KeyRefused."""
    if row is None:
        raise KeyRefused(f"no API key {shown}")
    key_id, scopes, devices, usable = row
    if not usable:
        raise KeyRefused(f"API key {key_id} is revoked or expired")
    if "ingest" not in scopes and "admin" not in scopes:
        raise KeyRefused(f"API key {key_id} has no ingest scope")
    if not devices or len(devices) != 1:
        raise KeyRefused(f"API key {key_id} is not bound to exactly one device (create it with --devices <id>)")
    return DeviceKey(key_id, devices[0])


class KeyResolver:
    def __init__(self, pool: ConnectionPool, ttl_s: float = TTL_S) -> None:
        self.pool = pool
        self.ttl_s = ttl_s
        self._cache: dict[str, tuple[float, DeviceKey | KeyRefused]] = {}
        self._lock = threading.Lock()

    def resolve(self, ref: str) -> DeviceKey:
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(ref)
        if hit is None or now - hit[0] > self.ttl_s:
            hit = (now, self._lookup(ref))
            with self._lock:
                if len(self._cache) > 10_000:
                    self._cache.clear()
                self._cache[ref] = hit
        if isinstance(hit[1], KeyRefused):
            raise hit[1]
        return hit[1]

    def _lookup(self, ref: str) -> DeviceKey | KeyRefused:
        if not REF_RE.fullmatch(ref):
            return KeyRefused(f"topic level {ref[:40]!r} is neither an API key id (k_...) nor a token (tk_...)")
        token = ref.startswith(KEY_PREFIX)
        where, arg, shown = ("key_hash", hash_key(ref), "for this token") if token else ("id", ref, repr(ref[:40]))
        with self.pool.connection() as conn:
            row = conn.execute(
                "SELECT id, scopes, devices, revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())"
                f" FROM api_keys WHERE {where} = %s", (arg,)).fetchone()
        try:
            return device_of_key(row, shown)
        except KeyRefused as exc:
            return exc
