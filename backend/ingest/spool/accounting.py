"""What the spool counts: its counters, the bytes on disk, the notes about damage in corrupt/."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from backend.ingest.spool.segments import CORRUPT_DIR, WORKER_PREFIX, list_segments, segment_created


def _iso(t: datetime | None) -> str | None:
    return t.isoformat().replace("+00:00", "Z") if t else None


@dataclass
class SpoolCounters:
    appended_records: int = 0
    appended_readings: int = 0
    appended_bytes: int = 0
    refused_batches: int = 0
    refused_readings: int = 0
    replayed_records: int = 0
    replayed_readings: int = 0
    replay_inserted: int = 0
    replay_duplicates: int = 0
    replay_chunks: int = 0
    replay_failures: int = 0
    corrupt_records: int = 0
    corrupt_bytes: int = 0
    corrupt_segments: int = 0
    missing_segments: int = 0
    adopted_dirs: int = 0
    last_replay_at: datetime | None = None
    last_problem: str | None = None
    last_problem_at: datetime | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def totals(self) -> dict[str, Any]:
        """The counters as /health and /telemetry/batch/status show them."""
        c = self
        return {
            "appended_records_total": c.appended_records,
            "appended_readings_total": c.appended_readings,
            "refused_readings_total": c.refused_readings,
            "replayed_records_total": c.replayed_records,
            "replayed_readings_total": c.replayed_readings,
            "replay_inserted_total": c.replay_inserted,
            "replay_duplicates_total": c.replay_duplicates,
            "replay_chunks_total": c.replay_chunks,
            "replay_failures_total": c.replay_failures,
            "adopted_dirs_total": c.adopted_dirs,
            "corrupt_records_total": c.corrupt_records,
            "corrupt_segments_total": c.corrupt_segments,
            "missing_segments_total": c.missing_segments,
            "last_replay_at": _iso(c.last_replay_at),
            "last_problem": c.last_problem,
            "last_problem_at": _iso(c.last_problem_at),
        }


def disk_usage(root: Path) -> dict[str, Any]:
    """Bytes and segments across every worker directory (what counts against the bound)."""
    total = segments = dirs = 0
    oldest: float | None = None
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError:
        entries = []
    for e in entries:
        if not (e.name.startswith(WORKER_PREFIX) and e.is_dir()):
            continue
        dirs += 1
        for _seq, path in list_segments(Path(e.path)):
            try:
                total += path.stat().st_size
            except FileNotFoundError:
                continue
            segments += 1
            created = segment_created(path)
            oldest = created if oldest is None else min(oldest, created)
    return {"bytes": total, "segments": segments, "worker_dirs": dirs, "oldest_segment_created": oldest}


def corrupt_notes(root: Path) -> dict[str, int]:
    """Counts from the notes in corrupt/ (every worker's, persistent across restarts)."""
    totals = {"segments": 0, "records": 0, "bytes": 0, "missing_segments": 0}
    aside = root / CORRUPT_DIR
    if aside.is_dir():
        for e in os.scandir(aside):
            if e.name.endswith(".json"):
                try:
                    note = orjson.loads(Path(e.path).read_bytes())
                except (OSError, orjson.JSONDecodeError):
                    continue
                if "missing_segments" in note:
                    totals["missing_segments"] += int(note["missing_segments"])
                    continue
                totals["segments"] += 1
                totals["records"] += int(note.get("corrupt_records", 0))
                totals["bytes"] += int(note.get("corrupt_bytes", 0))
    return totals
