"""One worker's operations objects: `build_ops` makes its `Ops` from what create_app() built.

The hooks are registered here and in create_app (write observers, the request middleware);
nothing is patched.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from backend.fleet import Fleet
from backend.ingest.admission import InFlight
from backend.ingest.catalogue import FieldCatalogue
from backend.ingest.observers import WriteObservers
from backend.ingest.write_path import WritePath
from backend.ops import multiproc
from backend.ops.board import InstanceBoard
from backend.ops.metrics import Metrics
from backend.ops.status import worker_status


@dataclass
class Ops:
    metrics: Metrics
    board: InstanceBoard

    def start(self) -> None:
        self.board.start()

    def close(self) -> None:
        self.board.close()


def build_ops(write_path: WritePath, observers: WriteObservers, catalogue: FieldCatalogue, admission: InFlight,
              fleet: Fleet) -> Ops:
    metrics = Metrics()

    def status() -> dict:
        return worker_status(write_path.buffer, write_path.spool, catalogue, admission)

    def fleet_totals() -> Mapping[str, int]:
        return {"rate_limited": fleet.limits.stats.get("limited", 0),
                "alert_evaluated": fleet.alerts.stats.get("evaluated", 0),
                "alerts_opened": fleet.alerts.stats.get("opened", 0),
                "webhooks_sent": fleet.webhooks.stats.get("sent", 0),
                "webhooks_failed": fleet.webhooks.stats.get("failed", 0)}

    board = InstanceBoard(metrics, status, fleet_totals, multiproc.status_dir())
    observers.register(metrics.on_written)
    observers.register(board.poke)
    return Ops(metrics, board)
