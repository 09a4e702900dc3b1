"""The per-worker objects a request needs, built once by create_app() (backend/app.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from flask import Flask, current_app

if TYPE_CHECKING:  # the types only: these modules import services() themselves
    from psycopg_pool import ConnectionPool

    from backend.config import Config
    from backend.fleet import Fleet
    from backend.ingest.admission import InFlight
    from backend.ingest.buffer import BatchBuffer
    from backend.ingest.catalogue import FieldCatalogue
    from backend.ingest.pipeline import IngestEvents
    from backend.ingest.spool import Spool
    from backend.ingest.write_path import WritePath
    from backend.ops.health import HealthCheck
    from backend.ops.wiring import Ops
    from backend.store.database import Database
    from backend.store.maintenance import Maintenance
    from backend.store.rollups import RollupMerger

EXTENSION = "telemetry"


@dataclass(frozen=True)
class Services:
    config: Config
    database: Database
    pool: ConnectionPool
    write_path: WritePath  # buffer, circuit, spool, replayer
    catalogue: FieldCatalogue
    admission: InFlight
    health: HealthCheck
    maintenance: Maintenance
    fleet: Fleet
    ops: Ops | None = None  # metrics and the instance status (backend/ops/)
    rollups: RollupMerger | None = None  # folds committed readings into the rollups

    @property
    def buffer(self) -> BatchBuffer:
        return self.write_path.buffer

    @property
    def ingest_events(self) -> IngestEvents | None:
        return self.ops.metrics if self.ops is not None else None

    @property
    def spool(self) -> Spool | None:  # None when SPOOL_DIR=off or the directory is unusable
        return self.write_path.spool

    def start(self) -> None:
        self.write_path.start()
        self.maintenance.start()
        if self.rollups is not None:
            self.rollups.start()
        if self.ops is not None:
            self.ops.start()

    def close(self, timeout: float = 10.0) -> None:
        """Stop everything of this worker: write what is pending, then release the database.

        The one shutdown path: gunicorn's worker_exit, atexit and the tests' fixtures. Safe
        to call more than once.
        """
        self.write_path.close(timeout)  # first: it may still need the pool (or the spool)
        if self.ops is not None:
            self.ops.close()  # after the last flush: its final round publishes the final totals
        self.fleet.close()
        self.maintenance.stop()
        if self.rollups is not None:
            self.rollups.stop()
        self.health.close()
        self.pool.close()

    def init_app(self, app: Flask) -> None:
        app.extensions[EXTENSION] = self


def services() -> Services:
    return current_app.extensions[EXTENSION]
