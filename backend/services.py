"""The per-worker objects a request needs, built once by create_app()."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flask import current_app
from psycopg_pool import ConnectionPool

from backend.config import Config
from backend.ingest.buffer import BatchBuffer
from backend.ingest.catalogue import FieldCatalogue


@dataclass
class Services:
    config: Config
    pool: ConnectionPool
    buffer: BatchBuffer
    catalogue: FieldCatalogue
    extras: dict[str, Any] = field(default_factory=dict)


def services() -> Services:
    return current_app.extensions["telemetry"]
