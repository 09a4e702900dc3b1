"""Rollup upkeep (issue 14): what keeping the 1m/1h/1d rollups costs batched ingest.

Two servers of the same code on one scratch database: one folds the rollups
(ROLLUP_MERGE_INTERVAL_S=1, the default), the other never (0); rounds alternate between
them. A round ends when its readings are stored and, on the folding server, also folded
(the rest the server's last interval left is folded by the bench, timed, rather than
waiting for the server's timer), so the time measured leaves the rollups up to date. What
an earlier round left unfolded is folded before the next starts, untimed: no round pays for
another's.

Two shapes of request, 1,000 JSON readings each, 16 clients:
- per client: each client sends its own device (the main bench's batches);
- fleet: every request carries 250 of 500 devices (gateways forwarding a fleet), so
  concurrent requests touch the same rollup rows. Under 0020's trigger, which upserted
  those rows inside each writer's transaction, writers queued on each other's row locks
  (~58% of ingest lost); migrations/0052 folds after the commit instead.
"""

from __future__ import annotations

import os
import statistics
import time
from typing import TYPE_CHECKING, Any

import orjson
import psycopg

from backend.store.rollups import merge_all

from .load import post_all
from .server import Gunicorn, ProcWatch

if TYPE_CHECKING:
    from .run import Bench

FLEET_DEVICES = 500
PER_REQUEST_DEVICES = 250
SHAPES = ("per_client", "fleet")


def _work(shape: str, tag: str, clients: int, requests: int, base: float,
          headers: dict[str, str]) -> tuple[list[list[tuple[dict[str, str], bytes]]], list[str]]:
    """Each client's (headers, body) list and the device ids used."""
    work: list[list[tuple[dict[str, str], bytes]]] = [[] for _ in range(clients)]
    for g in range(requests):  # g: the request's global number; its readings share ts = base + g ms
        ts = round(base + g * 0.001, 3)
        if shape == "per_client":
            devices = [f"u{tag}c{g % clients:02d}"] * PER_REQUEST_DEVICES  # 250 messages of one device
            ts_of = [round(base + (g * PER_REQUEST_DEVICES + i) * 0.001, 3) for i in range(PER_REQUEST_DEVICES)]
        else:
            first = g * 97 % FLEET_DEVICES
            devices = [f"u{tag}f{(first + i) % FLEET_DEVICES:03d}" for i in range(PER_REQUEST_DEVICES)]
            ts_of = [ts] * PER_REQUEST_DEVICES
        body = orjson.dumps([{"device_id": d, "ts": t, "roll": (g + i) % 360 - 180.0, "pitch": (g * 3 + i) % 180 - 90.0,
                              "alt": 100.0 + (g + i) % 500, "bat_v": 11.0 + (g % 20) / 10}
                             for i, (d, t) in enumerate(zip(devices, ts_of, strict=True))])
        work[g % clients].append(({**headers, "Content-Type": "application/json"}, body))
    names = sorted({f"u{tag}c{c:02d}" for c in range(clients)} if shape == "per_client"
                   else {f"u{tag}f{d:03d}" for d in range(FLEET_DEVICES)})
    return work, names


def _wait(conn: psycopg.Connection, query: str, params: tuple, until: Any, timeout: float = 180.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = conn.execute(query, params).fetchone()[0]
        if got == until or time.monotonic() > deadline:
            return got
        time.sleep(0.02)


def _round(bench: Bench, srv: Gunicorn, url: str, shape: str, fold: bool, tag: str, base: float) -> dict[str, float]:
    p = bench.plan
    requests = max(p.batch_clients, p.batch_readings // 1000)
    work, devices = _work(shape, tag, p.batch_clients, requests, base, srv.headers())
    expected = requests * PER_REQUEST_DEVICES * 4
    with psycopg.connect(url, autocommit=True) as conn:
        merge_all(conn)  # what earlier rounds left, untimed
        with ProcWatch(srv, url) as watch:
            t0 = time.perf_counter()
            run = post_all(srv.url, "/telemetry/parse", work)
            stored = _wait(conn, "SELECT count(*) FROM telemetry_readings WHERE device_id = ANY(%s)", (devices,),
                           expected)
            if fold:  # what the server's last interval left: folded now, timed (not the wait for the timer)
                merge_all(conn)
            seconds = time.perf_counter() - t0
    s = watch.summary()
    n = max(stored, 1)
    if stored != expected or run.ok != run.requests:
        bench.log(f"upkeep {shape}: {stored}/{expected} stored, statuses {run.statuses} {run.errors[:1]}")
    return {"readings_per_s": min(stored, expected) / seconds, "server_us": 1e6 * s["server_cpu_s"] / n,
            "postgres_us": 1e6 * s["postgres_cpu_s"] / n}


def upkeep(bench: Bench) -> dict[str, Any]:
    from .run import scratch_database

    rounds = 1 if bench.plan.quick else 3
    out: dict[str, Any] = {"target": "loss <= 10%"}
    with scratch_database(bench.url, f"bench_upkeep_{os.getpid()}") as url:
        servers = {True: Gunicorn(url, bench.workdir / "upkeep-fold", env={"ROLLUP_MERGE_INTERVAL_S": "1"}),
                   False: Gunicorn(url, bench.workdir / "upkeep-nofold", env={"ROLLUP_MERGE_INTERVAL_S": "0"})}
        try:
            for srv in servers.values():
                srv.start()
            for shape in SHAPES:
                runs: dict[bool, list[dict[str, float]]] = {True: [], False: []}
                for rnd in range(rounds):
                    for fold in (True, False) if rnd % 2 == 0 else (False, True):
                        tag = f"{shape[0]}{rnd}{int(fold)}"
                        base = time.time() - (20 + 4 * rnd + 2 * fold + (shape == "fleet")) * 3600
                        runs[fold].append(_round(bench, servers[fold], url, shape, fold, tag, base))

                def med(fold: bool, key: str, runs: dict = runs) -> float:
                    return statistics.median(x[key] for x in runs[fold])

                cpu = {f: med(f, "server_us") + med(f, "postgres_us") for f in (True, False)}
                loss = 1 - med(True, "readings_per_s") / med(False, "readings_per_s")
                out[shape] = {
                    "with_rollups_per_s": round(med(True, "readings_per_s")),
                    "without_rollups_per_s": round(med(False, "readings_per_s")), "loss": round(loss, 3),
                    "rounds": {"with_rollups": [round(x["readings_per_s"]) for x in runs[True]],
                               "without_rollups": [round(x["readings_per_s"]) for x in runs[False]]},
                    "cpu_us_per_reading": {"with_rollups": round(cpu[True], 2), "without_rollups": round(cpu[False], 2)},
                    "cpu_extra": round(cpu[True] / cpu[False] - 1, 3) if cpu[False] else float("nan")}
                bench.log(f"rollup upkeep {shape}: {out[shape]['with_rollups_per_s']:,} readings/s folding,"
                          f" {out[shape]['without_rollups_per_s']:,} without ({loss:.1%} loss); CPU per reading"
                          f" {cpu[True]:.1f} vs {cpu[False]:.1f} us")
        finally:
            for srv in servers.values():
                srv.stop()
    out["loss"] = max(out[s]["loss"] for s in SHAPES)  # the target holds for both shapes or not at all
    return out


def render(u: dict[str, Any]) -> list[str]:
    lines = ["Rollup upkeep (bench/rollup_upkeep.py): batched JSON ingest, 1,000 readings a request, 16 clients;"
             " a round ends once its readings are stored and folded.", "",
             "| shape | readings/s folding | readings/s without | loss | rounds (with / without) | CPU us per reading"
             " (with / without) |", "|---|---|---|---|---|---|"]
    for shape in SHAPES:
        s = u[shape]
        lines.append(f"| {shape} | {s['with_rollups_per_s']:,} | {s['without_rollups_per_s']:,} | {s['loss']:.1%}"
                     f" | {s['rounds']['with_rollups']} / {s['rounds']['without_rollups']}"
                     f" | {s['cpu_us_per_reading']['with_rollups']} / {s['cpu_us_per_reading']['without_rollups']} |")
    return lines + ["", f"Target: at most 10% loss, for both shapes (worst: {u['loss']:.1%}).", ""]
