"""Keyset cursors for /telemetry/query: the sort key of a page's last row, opaque to clients.

A cursor is base64url(JSON [version, fingerprint, key]). The fingerprint is a hash of the
query's filters and order, so a cursor is refused when used with another query (it would
page through something else); a damaged or made-up cursor is refused by its shape. A
well-formed cursor can only name a position in the same query, so it needs no secret.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Sequence
from datetime import datetime

import orjson

from backend.store.queries import QueryError

VERSION = 1
Key = tuple[object, ...]  # values of the sort columns: datetimes, texts, floats (None: no value)


def fingerprint(parts: Sequence[object]) -> str:
    return hashlib.sha256(orjson.dumps(list(parts), default=str)).hexdigest()[:16]


def _plain(v: object) -> object:
    return {"t": v.isoformat()} if isinstance(v, datetime) else v


def encode(fp: str, key: Key) -> str:
    raw = orjson.dumps([VERSION, fp, [_plain(v) for v in key]])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode(token: str, fp: str, kinds: Sequence[str]) -> Key:
    """The key in `token`; `kinds` per column: "time", "text" or "number" (a number may be null)."""
    bad = QueryError("next: not a cursor of this query (pass the `next` of the previous page, with the same"
                     " filters and order)")
    try:
        doc = orjson.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        raise bad from None
    if not (isinstance(doc, list) and len(doc) == 3 and doc[0] == VERSION and doc[1] == fp
            and isinstance(doc[2], list) and len(doc[2]) == len(kinds)):
        raise bad
    key: list[object] = []
    for kind, v in zip(kinds, doc[2], strict=True):
        if kind == "time":
            if not (isinstance(v, dict) and isinstance(v.get("t"), str)):
                raise bad
            try:
                t = datetime.fromisoformat(v["t"])
            except ValueError:
                raise bad from None
            if t.tzinfo is None:
                raise bad
            key.append(t)
        elif kind == "text":
            if not isinstance(v, str) or len(v) > 1000 or "\x00" in v:
                raise bad
            key.append(v)
        elif v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise bad
        else:
            key.append(None if v is None else float(v))
    return tuple(key)
