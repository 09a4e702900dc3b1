"""API keys: generation, storage (hash only), listing and revocation (the SQL of `api_keys`).

A key is `tk_` followed by 43 URL-safe characters (32 bytes, 256 random bits from
`secrets`). Only its SHA-256 is stored: for a secret with that much entropy a fast hash is
as good as a slow one and lets every request be checked with one dictionary lookup. The
plaintext is returned once, by `create_key`, and never stored or logged.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from backend.ingest.parsing.base import DEVICE_RE

SCOPES = ("ingest", "read", "admin")
KEY_PREFIX = "tk_"
SHOWN_PREFIX_LEN = 10  # "tk_" + 7 characters: enough to tell keys apart, far from enough to guess one
_COLUMNS = "id, name, prefix, scopes, devices, created_at, expires_at, revoked_at, last_used_at"


class KeyRequestError(ValueError):
    """A key request the caller got wrong (unknown scope, bad device list, ...)."""


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(raw: str) -> str:
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class KeyInfo:
    id: str
    name: str
    prefix: str
    scopes: list[str]
    devices: list[str] | None
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None

    @classmethod
    def from_row(cls, row: tuple) -> KeyInfo:
        return cls(*row)

    def as_dict(self) -> dict[str, Any]:
        def iso(t: datetime | None) -> str | None:
            return t.isoformat().replace("+00:00", "Z") if t else None

        now = datetime.now(UTC)
        status = "active"
        if self.revoked_at is not None:
            status = "revoked"
        elif self.expires_at is not None and self.expires_at <= now:
            status = "expired"
        return {"id": self.id, "name": self.name, "prefix": self.prefix, "scopes": self.scopes,
                "devices": self.devices, "status": status, "created_at": iso(self.created_at),
                "expires_at": iso(self.expires_at), "revoked_at": iso(self.revoked_at),
                "last_used_at": iso(self.last_used_at)}


def normalise_scopes(scopes: object) -> list[str]:
    if isinstance(scopes, str):
        scopes = [s for s in scopes.replace(" ", ",").split(",") if s]
    if not isinstance(scopes, list | tuple) or not scopes:
        raise KeyRequestError(f"scopes: give one or more of {', '.join(SCOPES)}")
    out = []
    for s in scopes:
        if s not in SCOPES:
            raise KeyRequestError(f"scopes: {str(s)[:40]!r} is not one of {', '.join(SCOPES)}")
        if s not in out:
            out.append(s)
    return out


def normalise_devices(devices: object) -> list[str] | None:
    if devices in (None, "", []):
        return None
    if isinstance(devices, str):
        devices = [d.strip() for d in devices.split(",") if d.strip()]
    if not isinstance(devices, list | tuple):
        raise KeyRequestError("devices: a list of device ids, or a comma-separated string")
    for d in devices:
        if not isinstance(d, str) or not DEVICE_RE.match(d):
            raise KeyRequestError(f"devices: {str(d)[:40]!r} is not a device id")
    return sorted(set(devices))


def create_key(conn: psycopg.Connection, name: str, scopes: object, devices: object = None,
               expires_days: float | None = None) -> tuple[KeyInfo, str]:
    """Store a new key; returns its info and the plaintext (show it once, then forget it)."""
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        raise KeyRequestError("name: required, at most 200 characters")
    scope_list = normalise_scopes(scopes)
    device_list = normalise_devices(devices)
    expires = None
    if expires_days is not None:
        if expires_days <= 0:
            raise KeyRequestError("expires_days: must be positive")
        expires = datetime.now(UTC) + timedelta(days=float(expires_days))
    raw = generate_key()
    for _ in range(5):
        key_id = "k_" + secrets.token_hex(6)
        try:
            row = conn.execute(
                "INSERT INTO api_keys (id, name, key_hash, prefix, scopes, devices, expires_at)"
                f" VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING {_COLUMNS}",
                (key_id, name.strip(), hash_key(raw), raw[:SHOWN_PREFIX_LEN], scope_list, device_list, expires),
            ).fetchone()
        except psycopg.errors.UniqueViolation:  # an id collision (2^-48); try another id
            if not conn.autocommit:
                raise
            continue
        assert row is not None
        return KeyInfo.from_row(row), raw
    raise RuntimeError("could not allocate a key id")


def list_keys(conn: psycopg.Connection, include_revoked: bool = True) -> list[KeyInfo]:
    where = "" if include_revoked else " WHERE revoked_at IS NULL"
    rows = conn.execute(f"SELECT {_COLUMNS} FROM api_keys{where} ORDER BY created_at, id").fetchall()
    return [KeyInfo.from_row(r) for r in rows]


def revoke_key(conn: psycopg.Connection, key_id: str) -> KeyInfo | None:
    """Revoke (idempotent); None when there is no such key. Rows are kept for the record."""
    row = conn.execute(
        "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()), updated_at = clock_timestamp()"
        f" WHERE id = %s RETURNING {_COLUMNS}", (key_id,)
    ).fetchone()
    return KeyInfo.from_row(row) if row else None
