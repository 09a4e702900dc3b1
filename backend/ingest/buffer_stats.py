"""What the batch buffer counts, as /health and /telemetry/batch/status show it."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from backend.ingest.sinks import WriteResult


def _iso(t: datetime | None) -> str | None:
    return t.isoformat().replace("+00:00", "Z") if t else None


@dataclass
class BufferStats:
    written: int = 0
    duplicates: int = 0
    quarantined: int = 0
    failed_attempts: int = 0
    retried: int = 0
    flushes: int = 0
    flushes_by_method: dict[str, int] = field(default_factory=dict)
    spooled: int = 0
    refused: int = 0
    failed: int = 0
    last_flush_at: datetime | None = None
    last_flush_rows: int = 0
    last_flush_ms: float = 0.0
    last_error: str | None = None
    last_error_at: datetime | None = None

    def committed(self, result: WriteResult, rows: int, elapsed_ms: float) -> None:
        result.write_seconds = elapsed_ms / 1000  # the write observers (metrics) see its time too
        self.flushes += 1
        if result.method:
            self.flushes_by_method[result.method] = self.flushes_by_method.get(result.method, 0) + 1
        self.written += result.inserted
        self.duplicates += result.duplicates
        self.quarantined += result.quarantined
        self.last_flush_at = datetime.now(UTC)
        self.last_flush_rows = rows
        self.last_flush_ms = elapsed_ms

    def error(self, message: str, attempt: bool = True) -> None:
        """A failed write attempt (`attempt`), or a reason the data could not be made durable."""
        if attempt:
            self.failed_attempts += 1
        self.last_error = message[:500]
        self.last_error_at = datetime.now(UTC)

    def totals(self) -> dict[str, Any]:
        return {
            "written_total": self.written,
            "duplicates_total": self.duplicates,
            "quarantined_total": self.quarantined,
            "failed_attempts_total": self.failed_attempts,
            "retried_total": self.retried,
            "spooled_total": self.spooled,
            "refused_total": self.refused,
            "failed_total": self.failed,
            "flushes_total": self.flushes,
            "flushes_by_method": dict(self.flushes_by_method),
            "last_flush_at": _iso(self.last_flush_at),
            "last_flush_rows": self.last_flush_rows,
            "last_flush_ms": round(self.last_flush_ms, 2),
            "last_error": self.last_error,
            "last_error_at": _iso(self.last_error_at),
        }
