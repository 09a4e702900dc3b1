"""The stream tokens' HMAC secret: STREAM_TOKEN_SECRET, else the database's own (stream_secret)."""

from __future__ import annotations

import secrets

import psycopg

from backend.config import Config
from backend.live.tokens import StreamTokens


def token_secret(cfg: Config, database_url: str) -> str:
    if cfg.stream_token_secret:
        return cfg.stream_token_secret
    # One per database: every worker, stream process and instance that shares it agrees.
    # Created on first use if the table was emptied (the first writer wins, the others read it).
    with psycopg.connect(database_url, autocommit=True, connect_timeout=10) as conn:
        conn.execute("INSERT INTO stream_secret (secret) VALUES (%s) ON CONFLICT DO NOTHING",
                     (secrets.token_hex(32),))
        row = conn.execute("SELECT secret FROM stream_secret").fetchone()
    if row is None:
        raise RuntimeError("stream_secret is empty; run the migrations (python -m backend migrate)")
    return str(row[0])


class LazyTokens:
    """StreamTokens built on first use: a worker must start even while the database is down."""

    def __init__(self, cfg: Config, database_url: str) -> None:
        self._cfg = cfg
        self._url = database_url
        self._tokens: StreamTokens | None = None

    def get(self) -> StreamTokens:
        if self._tokens is None:
            self._tokens = StreamTokens(token_secret(self._cfg, self._url), self._cfg.stream_token_ttl_s)
        return self._tokens
