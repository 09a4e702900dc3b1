"""/telemetry/batch/status for the whole instance: every worker's status file, added up.

Source: the per-worker status files that backend/ops/board.py writes (not the Prometheus
files: the status has text and times that no metric holds). The answering worker uses its
own status as of now; the others' are as of their last publication (after their last
flush, or at most a second old). Rules:
- `*_total` counters and `flushes_by_method` are summed over every worker that ever ran in
  this instance, exited ones included, so totals never go backwards when a worker is recycled;
- levels (pending readings, readings in flight) are summed over live workers; ages take
  the maximum; the circuit shown is the most open one, with `open_workers`;
- the spool directory is shared: its size is the same in each worker's view (maximum),
  each worker's own pending records are summed;
- last flush and last error: the most recent of any worker.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson

from backend.ingest.admission import InFlight
from backend.ingest.buffer import BatchBuffer
from backend.ingest.catalogue import FieldCatalogue
from backend.ingest.spool import Spool
from backend.ops.metrics import circuit_level
from backend.ops.multiproc import alive

SUMMED_LEVELS = ("pending_records",)
MAXED = ("oldest_pending_age_s",)
SPOOL_SUMMED_LEVELS = ("own_pending_records", "own_pending_readings")
SPOOL_MAXED = ("depth_bytes", "depth_segments", "worker_dirs", "oldest_unflushed_age_s")


def read_workers(status_dir: Path | None, own_pid: int) -> list[tuple[int, bool, dict[str, Any]]]:
    """(pid, live, status) of the other workers that published a status."""
    if status_dir is None:
        return []
    out = []
    for path in status_dir.glob("*.json"):
        try:
            doc = orjson.loads(path.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            continue  # removed or replaced while read: its next publication counts
        pid = int(doc.get("pid", 0))
        if pid and pid != own_pid:
            out.append((pid, alive(pid), doc.get("status") or {}))
    return out


def _sum_totals(into: dict[str, Any], other: dict[str, Any]) -> None:
    for key, value in other.items():
        if key.endswith("_total") and isinstance(value, int | float) and not isinstance(value, bool):
            into[key] = into.get(key, 0) + value


def _later(a: str | None, b: str | None) -> bool:
    return b is not None and (a is None or b > a)  # ISO 8601 UTC strings sort by time


def merge(own: dict[str, Any], others: list[tuple[int, bool, dict[str, Any]]]) -> dict[str, Any]:
    """The instance's status from this worker's (`own`, fresh) and the others' published ones."""
    out = dict(own)
    out["flushes_by_method"] = dict(own.get("flushes_by_method") or {})
    spool = dict(own["spool"]) if own.get("spool") else None
    circuit = own.get("circuit") or {}
    open_workers = 1 if circuit_level(str(circuit.get("state", "closed"))) else 0
    admission = dict(own["admission"]) if own.get("admission") else None
    workers = [_summary(os.getpid(), True, own)]
    for pid, live, st in others:
        workers.append(_summary(pid, live, st))
        _sum_totals(out, st)
        for method, n in (st.get("flushes_by_method") or {}).items():
            out["flushes_by_method"][method] = out["flushes_by_method"].get(method, 0) + n
        if _later(out.get("last_flush_at"), st.get("last_flush_at")):
            for key in ("last_flush_at", "last_flush_rows", "last_flush_ms"):
                out[key] = st.get(key)
        if _later(out.get("last_error_at"), st.get("last_error_at")):
            out["last_error"], out["last_error_at"] = st.get("last_error"), st.get("last_error_at")
        if spool is not None and st.get("spool"):
            _merge_spool(spool, st["spool"], live)
        if not live:
            continue
        for key in SUMMED_LEVELS:
            out[key] = out.get(key, 0) + st.get(key, 0)
        for key in MAXED:
            out[key] = max(out.get(key, 0.0), st.get(key, 0.0))
        theirs = st.get("circuit") or {}
        level = circuit_level(str(theirs.get("state", "closed")))
        open_workers += 1 if level else 0
        if level > circuit_level(str(circuit.get("state", "closed"))):
            circuit = theirs
        if admission is not None and st.get("admission"):
            for key in ("readings_in_flight", "refused_requests"):
                admission[key] = admission.get(key, 0) + st["admission"].get(key, 0)
    out["batch_full"] = any(w["pending_records"] >= out.get("batch_size", 1) for w in workers if w["live"])
    out["circuit"] = {**circuit, "open_workers": open_workers}
    if spool is not None:
        out["spool"] = spool
    if admission is not None:
        out["admission"] = admission
    out["scope"] = "instance"
    out["workers_live"] = sum(1 for w in workers if w["live"])
    out["workers"] = sorted(workers, key=lambda w: w["pid"])
    return out


def _merge_spool(spool: dict[str, Any], theirs: dict[str, Any], live: bool) -> None:
    _sum_totals(spool, theirs)
    if _later(spool.get("last_replay_at"), theirs.get("last_replay_at")):
        spool["last_replay_at"] = theirs.get("last_replay_at")
    if not live:
        return
    for key in SPOOL_SUMMED_LEVELS:
        spool[key] = spool.get(key, 0) + theirs.get(key, 0)
    for key in SPOOL_MAXED:
        spool[key] = max(spool.get(key) or 0, theirs.get(key) or 0)
    spool["accepting"] = bool(spool.get("accepting")) and bool(theirs.get("accepting"))


def _summary(pid: int, live: bool, st: dict[str, Any]) -> dict[str, Any]:
    return {"pid": pid, "live": live, "pending_records": st.get("pending_records", 0),
            "written_total": st.get("written_total", 0),
            "circuit": (st.get("circuit") or {}).get("state", "closed")}


def worker_status(buffer: BatchBuffer, spool: Spool | None, catalogue: FieldCatalogue,
                  admission: InFlight) -> dict[str, Any]:
    """This worker's own status (what each worker publishes, and `?scope=worker` answers)."""
    body = buffer.status()
    if spool is not None:
        body["spool"] = spool.status()
    body["catalogue"] = catalogue.status()
    body["admission"] = admission.status()
    return body
