"""Export phase: GET /telemetry/export of the query data set's last seconds, every device (1 M
readings in a full run), CSV and NDJSON, rows/s from the first byte asked to the last received; against
psql's own `COPY (the same SELECT) TO STDOUT` of the same rows, in the same run.

The statement the service runs is the one psql runs (built by backend/store/export.py,
parameters merged client-side), so the ratio is what the HTTP path and the worker cost.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from datetime import datetime, timedelta
from typing import Any

import psutil
import psycopg
import requests

from backend.store.export import SESSION, SETTINGS, readings_statement
from backend.store.queries import ReadingQuery

TARGET_ROWS_PER_S = 300_000
EXPORT_ROWS = 1_000_000


def _rows_over_http(url: str, headers: dict[str, str], params: dict[str, Any], fmt: str,
                    worker_pids: list[int]) -> dict[str, Any]:
    procs = [psutil.Process(p) for p in worker_pids if psutil.pid_exists(p)]
    rss0 = {p.pid: p.memory_info().rss for p in procs}
    peak = dict(rss0)
    lines = 0
    nbytes = 0
    t0 = time.perf_counter()
    with requests.get(url + "/telemetry/export", params={**params, "format": fmt}, headers=headers,
                      stream=True, timeout=600) as r:
        r.raise_for_status()
        for i, chunk in enumerate(r.iter_content(1 << 20)):
            lines += chunk.count(b"\n")
            nbytes += len(chunk)
            if i % 16 == 0:
                for p in procs:
                    peak[p.pid] = max(peak[p.pid], p.memory_info().rss)
    seconds = time.perf_counter() - t0
    rows = lines - (1 if fmt == "csv" else 0)
    growth = max((peak[p] - rss0[p] for p in peak), default=0)
    return {"format": fmt, "rows": rows, "seconds": seconds, "mb": round(nbytes / 2**20, 1),
            "rows_per_s": rows / seconds if seconds else 0.0, "worker_rss_growth_mb": round(growth / 2**20, 1)}


def _psql_copy(db_url: str, statement: str) -> dict[str, Any]:
    """psql printing the same COPY to a pipe we count (as a client program would receive it)."""
    psql = shutil.which("psql")
    t0 = time.perf_counter()
    if psql:
        options = " ".join(f"-c {k}={v.replace(' ', '')}" for k, v in SETTINGS.items())
        proc = subprocess.Popen([psql, db_url, "-X", "-q", "-c", statement], stdout=subprocess.PIPE,
                                env={**os.environ, "PGOPTIONS": options})
        assert proc.stdout is not None
        lines = sum(chunk.count(b"\n") for chunk in iter(lambda: proc.stdout.read(1 << 20), b""))
        if proc.wait() != 0:
            raise RuntimeError("psql COPY failed")
        tool = "psql"
    else:  # no client installed: the same COPY through psycopg, in this process
        lines = 0
        with psycopg.connect(db_url) as conn:
            conn.execute(SESSION)
            with conn.cursor().copy(statement) as cp:
                for data in cp:
                    lines += bytes(data).count(b"\n")
        tool = "psycopg"
    seconds = time.perf_counter() - t0
    return {"tool": tool, "rows": lines, "seconds": seconds, "rows_per_s": lines / seconds if seconds else 0.0}


def export_phase(srv: Any, db_url: str, dataset: dict[str, Any], log: Any) -> dict[str, Any]:
    """`srv`: the running service (bench/server.py Gunicorn); `dataset`: bench/dataset.py's figures.

    What is exported: the last seconds of the data set, every device, that make EXPORT_ROWS
    readings (the whole data set in a quick run): a time range is the common export, and it
    reads only its own part of the table (BRIN on ts), as a client's would.
    """
    per_second = dataset["devices"] * dataset["metrics"]
    seconds = min(dataset["timestamps"], max(1, EXPORT_ROWS // per_second))
    end = datetime.fromisoformat(dataset["end"])
    start = end - timedelta(seconds=seconds)
    params = {"start": start.isoformat(), "end": end.isoformat()}
    q = ReadingQuery(device_ids=[], metrics=[], start=start, end=end, desc=False)
    out: dict[str, Any] = {"devices": dataset["devices"], "seconds_of_data": seconds,
                           "target_rows_per_s": TARGET_ROWS_PER_S}
    for fmt in ("csv", "ndjson"):
        stmt = readings_statement(q, fmt, "ts", None)
        with psycopg.connect(db_url) as conn:
            conn.execute(SESSION)
            text = psycopg.ClientCursor(conn).mogrify(stmt.copy.as_string(conn), stmt.params)
        baseline = _psql_copy(db_url, text)
        http = _rows_over_http(srv.url, srv.headers(), params, fmt, srv.worker_pids())
        http["ratio_to_copy"] = round(http["rows_per_s"] / baseline["rows_per_s"], 2) if baseline["rows_per_s"] else 0
        out[fmt] = {"http": http, "copy": baseline}
        log(f"export {fmt}: {http['rows_per_s']:,.0f} rows/s over HTTP ({http['rows']:,} rows, {http['mb']} MB,"
            f" {http['seconds']:.2f} s, worker RSS +{http['worker_rss_growth_mb']} MB); {baseline['tool']} COPY of"
            f" the same rows {baseline['rows_per_s']:,.0f} rows/s ({baseline['rows']:,}); ratio"
            f" {http['ratio_to_copy']:.2f}")
    return out


def render(r: dict[str, Any]) -> list[str]:
    lines = ["", f"### Streaming export (GET /telemetry/export: the last {r['seconds_of_data']:,} s of the query data"
                 f" set, {r['devices']} devices, in time order)", "",
             "Rows/s from the request to the last byte received by one client; the baseline is the same COPY"
             " statement printed by psql (or psycopg) in the same run. Target: at least"
             f" {r['target_rows_per_s']:,} rows/s.", "",
             "| Format | rows | MB | service rows/s | COPY rows/s | ratio | worker RSS growth | target |",
             "|---|---|---|---|---|---|---|---|"]
    for fmt in ("csv", "ndjson"):
        h, c = r[fmt]["http"], r[fmt]["copy"]
        met = "met" if h["rows_per_s"] >= r["target_rows_per_s"] else "not met"
        lines.append(f"| {fmt} | {h['rows']:,} | {h['mb']} | {h['rows_per_s']:,.0f} | {c['rows_per_s']:,.0f}"
                     f" ({c['tool']}) | {h['ratio_to_copy']:.2f} | {h['worker_rss_growth_mb']} MB | {met} |")
    return lines
