"""The Flask workers' side of the stream: the commit publisher and the token issuer."""

from __future__ import annotations

import atexit
from dataclasses import dataclass

from flask import Flask, current_app

from backend.config import Config
from backend.ingest.observers import WriteObservers
from backend.live.publisher import CommitPublisher
from backend.live.secret import LazyTokens

EXTENSION = "stream"


@dataclass(frozen=True)
class StreamAccess:
    config: Config
    tokens: LazyTokens
    publisher: CommitPublisher


def init_stream(app: Flask, cfg: Config, database_url: str, observers: WriteObservers) -> StreamAccess:
    publisher = CommitPublisher(database_url, cfg.redis_url)
    if cfg.redis_url:
        # PostgreSQL's own NOTIFY comes from the commit itself (migrations/0041); with Redis
        # configured, the stream processes also listen there, woken after each commit.
        observers.register(publisher)
        publisher.start()
        atexit.register(publisher.close)
    access = StreamAccess(cfg, LazyTokens(cfg, database_url), publisher)
    app.extensions[EXTENSION] = access  # read by backend/api/stream.py (its blueprint: app.BLUEPRINTS)
    return access


def stream_access() -> StreamAccess:
    return current_app.extensions[EXTENSION]
