"""The stream phase of `make bench`: commit-to-event latency and what streaming costs ingest.

One service (gunicorn.conf.py, its stream process on a free STREAM_PORT). Runs, in order:
no subscriber, each subscriber count of the plan, no subscriber again (the baseline is the
mean of the two, so drift on this shared machine falls on both sides). In every run the
same batched ingest (JSON bodies of 1,000 readings spread over 500 devices, keep-alive
clients) goes on while a probe posts one reading every 50 ms to device `probe`.

Subscribers live in one other process (bench/stream_clients.py); subscriber i watches
device sd<i> and `probe`: one dashboard per device, as an operator's screens would be, so
each load reading reaches one subscriber and each probe reaches all of them.

Latency: for each probe event at each subscriber, arrival time minus the stream row's
created_at (clock_timestamp() in the trigger, inside the writer's transaction just before
its COMMIT): commit-to-event plus the rest of the commit, an upper bound.
"""

from __future__ import annotations

import http.client
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import orjson
import psutil
import psycopg
import requests

from backend.live.frames import ROW_SPAN

from .load import percentile, post_all
from .server import ROOT, Gunicorn, ProcWatch, free_port
from .stream_report import DEVICES, combine, render_stream, stream_targets

__all__ = ["render_stream", "stream_phase", "stream_targets"]

PER_CLIENT_PROCESS = 500


@dataclass(frozen=True)
class StreamPlan:
    subscribers: tuple[int, ...]
    readings: int
    clients: int
    per_request: int
    probe_interval_s: float = 0.05

    @classmethod
    def make(cls, quick: bool) -> StreamPlan:
        if quick:
            return cls((20,), 20_000, 4, 1000)
        return cls((100, 500), 300_000, 16, 1000)

    def order(self) -> tuple[int, ...]:
        """Warm-up, then each subscriber count three times (every other pass in reverse), every
        run between two baselines: 0 (warm-up), 0, a, b, 0, b, a, 0, a, b, 0 (quick: 0, 0, a, 0).
        Two identical baseline runs differ by up to 30% on this machine: a third pass."""
        if len(self.subscribers) == 1:
            return (0, 0, self.subscribers[0], 0)
        fwd, back = self.subscribers, tuple(reversed(self.subscribers))
        return (0, 0, *fwd, 0, *back, 0, *fwd, 0)


class Probe:
    """One reading to device `probe` every interval, on one keep-alive connection."""

    def __init__(self, url: str, key: str, interval: float, base_ts: float) -> None:
        self.url, self.key, self.interval, self.base_ts = url, key, interval, base_ts
        self.sent = 0
        self.failed = 0
        self.times: dict[int, tuple[float, float]] = {}  # probe number -> (sent, acknowledged)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Probe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        host = self.url.split("//")[1]
        conn = http.client.HTTPConnection(host, timeout=30)
        while not self._stop.wait(self.interval):
            body = f"device_id:probe,ts:{self.base_ts + self.sent * 0.001:.3f},p:{self.sent}"
            try:
                t_send = time.time()
                conn.request("POST", "/telemetry/parse", body=body,
                             headers={"X-API-Key": self.key, "Content-Type": "text/plain"})
                resp = conn.getresponse()
                resp.read()
                self.times[self.sent] = (t_send, time.time())
                self.sent += 1
                if resp.status != 200:
                    self.failed += 1
            except (OSError, http.client.HTTPException):
                self.failed += 1
                conn.close()
                conn = http.client.HTTPConnection(host, timeout=30)
        conn.close()


def _work(srv: Gunicorn, plan: StreamPlan, base: float) -> list[list[tuple[dict[str, str], bytes]]]:
    headers = {**srv.headers(), "Content-Type": "application/json"}
    per_msg = 4
    msgs_per_req = plan.per_request // per_msg
    n_req = plan.readings // plan.per_request
    work: list[list[tuple[dict[str, str], bytes]]] = [[] for _ in range(plan.clients)]
    seq = 0
    for r in range(n_req):
        msgs = []
        for _ in range(msgs_per_req):
            seq += 1
            msgs.append({"device_id": f"sd{seq % DEVICES}", "ts": round(base + seq * 0.001, 3),
                         "a": seq % 100 / 10, "b": seq % 37 / 3, "c": seq % 11, "d": seq % 7 / 7})
        work[r % plan.clients].append((headers, orjson.dumps(msgs)))
    return work


def _cpu(proc: psutil.Process | None) -> float:
    if proc is None:
        return 0.0
    try:
        t = proc.cpu_times()
        return t.user + t.system
    except psutil.Error:
        return 0.0


def _stream_process(srv: Gunicorn) -> psutil.Process | None:
    try:
        for child in psutil.Process(srv.proc.pid).children():  # type: ignore[union-attr]
            if "backend.live" in " ".join(child.cmdline()):
                return child
    except psutil.Error:
        return None
    return None


def _cores_used(w: dict[str, float], stream_s: float, clients_s: float) -> dict[str, float]:
    """Cores (CPU seconds / wall seconds) each group used while the ingest ran: where the two
    cores went. ProcWatch's "server" is gunicorn's master and children, the stream process
    among them; "bench" is this process (the ingest clients and the probe)."""
    wall = max(w["wall_s"], 1e-9)
    return {"gunicorn": round((w["server_cpu_s"] - stream_s) / wall, 2), "stream": round(stream_s / wall, 2),
            "subscriber_clients": round(clients_s / wall, 2), "postgres": round(w["postgres_cpu_s"] / wall, 2),
            # ProcWatch does not know the subscriber clients (children of this process): its
            # "other" includes them, so they are taken out here.
            "ingest_clients": round(w["bench_cpu_s"] / wall, 2),
            "other": round(max(0.0, w["other_cpu_s"] - clients_s) / wall, 2),
            "stolen": round(w["steal_s"] / wall, 2), "wall_s": w["wall_s"]}


def one_run(srv: Gunicorn, database_url: str, plan: StreamPlan, n: int, token: str, stream_url: str,
            base: float, log: Callable[[str], None]) -> dict[str, Any]:
    # Subscribers in processes of at most PER_CLIENT_PROCESS each. They share the 2 cores with
    # what they measure, so they are as cheap as clients can be (bench/stream_clients.py: bare
    # protocols, one process, one epoll for all sockets); reading 500 sockets in turn adds
    # at most a few ms of its own queue to the latency, far less than 5 processes' CPU did.
    procs: list[subprocess.Popen[str]] = []
    for first in range(0, n, PER_CLIENT_PROCESS):
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "bench.stream_clients", "--url", stream_url, "--token", token,
             "--first", str(first), "--n", str(min(PER_CLIENT_PROCESS, n - first))],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
    ready = 0
    for proc in procs:
        hello = orjson.loads(proc.stdout.readline())  # type: ignore[union-attr]
        ready += hello["ready"]
        if hello["errors"]:
            raise RuntimeError(f"subscribers failed to connect: {hello['errors']}")
    if ready != n:
        raise RuntimeError(f"only {ready} of {n} subscribers connected")
    streamer = _stream_process(srv)
    health0 = requests.get(stream_url + "/health", timeout=10).json()
    client_procs = [psutil.Process(p.pid) for p in procs]
    cpu0 = (_cpu(streamer), sum(map(_cpu, client_procs)))
    work = _work(srv, plan, base)
    with ProcWatch(srv, database_url) as watch, \
            Probe(srv.url, srv.api_key, plan.probe_interval_s, base - 600) as probe:
        t0 = time.perf_counter()
        run = post_all(srv.url, "/telemetry/parse", work)
        seconds = time.perf_counter() - t0
        stream_ingest_s = _cpu(streamer) - cpu0[0]
        clients_ingest_s = sum(map(_cpu, client_procs)) - cpu0[1]
    out: dict[str, Any] = {
        "subscribers": n, "readings": plan.readings, "ok": run.ok, "requests": run.requests,
        "errors": run.errors[:3], "seconds": round(seconds, 3),
        "readings_per_s": plan.readings * run.ok / max(run.requests, 1) / seconds,
        "ack_p99_ms": percentile(run.latencies_ms, 99), "probes_sent": probe.sent, "probes_failed": probe.failed,
        "load_average_1m": round(os.getloadavg()[0], 1),  # the machine is shared: how busy it was
        "cores": _cores_used(watch.summary(), stream_ingest_s, clients_ingest_s),
    }
    if procs:
        time.sleep(1.0)  # the last probes' events are on their way (latency is measured, not this)
        health = requests.get(stream_url + "/health", timeout=10).json()
        out["server_lag_ms"], out["server_read_ms"] = health["lag_ms"], health["read_ms"]
        # Per second of ingest: reads that found rows, and chunks handed to subscribers (socket
        # writes, each one a recv() in a client): the counts the stream's CPU follows.
        for k in ("dispatches", "offers", "wakeups"):
            out[f"{k}_per_s"] = round((health.get(k, 0) - health0.get(k, 0)) / seconds, 1)
        out["stream_cpu_s"] = round(_cpu(streamer) - cpu0[0], 2)
        out["clients_cpu_s"] = round(sum(map(_cpu, client_procs)) - cpu0[1], 2)
        res: dict[str, Any] = {"readings": 0, "missed": 0, "probes": [], "errors": []}
        for proc in procs:
            got, _ = proc.communicate("stop\n", timeout=120)
            part = orjson.loads(got.strip().splitlines()[-1])
            for k in ("readings", "missed", "probes", "errors"):
                res[k] += part[k]
        rows = sorted({eid // ROW_SPAN for eid, _, _ in res["probes"]})
        with psycopg.connect(database_url, autocommit=True) as conn:
            made = dict(conn.execute("SELECT id, extract(epoch FROM created_at)::float8 FROM stream_events"
                                     " WHERE id = ANY(%s)", (rows,)).fetchall())
        # Upper bound: from the stream row's time (inside the commit, before COMMIT) to arrival.
        lat = [(arrived - made[eid // ROW_SPAN]) * 1000 for eid, _, arrived in res["probes"]
               if eid // ROW_SPAN in made]
        # Lower bound: from the probe's acknowledgement (after its commit) to arrival; < 0 when
        # the event came before the answer.
        ack = [(arrived - probe.times[k][1]) * 1000 for _, k, arrived in res["probes"] if k in probe.times]
        send = [(arrived - probe.times[k][0]) * 1000 for _, k, arrived in res["probes"] if k in probe.times]
        out.update({
            "probe_events": len(res["probes"]), "expected_probe_events": probe.sent * n,
            "p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99), "max_ms": max(lat, default=float("nan")),
            "ack_to_event_p50_ms": percentile(ack, 50), "ack_to_event_p99_ms": percentile(ack, 99),
            "send_to_event_p50_ms": percentile(send, 50), "send_to_event_p99_ms": percentile(send, 99),
            "load_events": res["readings"] - len(res["probes"]), "missed": res["missed"],
            "client_errors": res["errors"], "_lat": lat, "_ack": ack,  # pooled over runs by _combine
        })
        log(f"stream {n} subscribers: commit-to-event p50 {out['p50_ms']:.1f} ms, p99 {out['p99_ms']:.1f} ms"
            f" (ack-to-event p50 {out['ack_to_event_p50_ms']:.1f} p99 {out['ack_to_event_p99_ms']:.1f},"
            f" send-to-event p50 {out['send_to_event_p50_ms']:.1f} p99 {out['send_to_event_p99_ms']:.1f};"
            f" in the stream process, commit-to-dispatch {out['server_lag_ms']}, reads {out['server_read_ms']};"
            f" per s: {out['wakeups_per_s']} wake-ups, {out['dispatches_per_s']} dispatches,"
            f" {out['offers_per_s']} subscriber writes)"
            f" ({len(lat)} probe events of {probe.sent * n}); ingest {out['readings_per_s']:,.0f} readings/s;"
            f" missed {res['missed']}; stream CPU {out['stream_cpu_s']} s, clients CPU {out['clients_cpu_s']} s;"
            f" load average {out['load_average_1m']}; cores {out['cores']}")
    else:
        log(f"stream 0 subscribers: ingest {out['readings_per_s']:,.0f} readings/s"
            f" (load average {out['load_average_1m']}; cores {out['cores']})")
    return out


def wait_stream_up(health_url: str, timeout: float = 60) -> None:
    """Until the stream process answers its health route (it starts after gunicorn)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if requests.get(health_url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("the stream process did not answer")
        time.sleep(0.2)


def stream_phase(database_url: str, workdir: Path, quick: bool, log: Callable[[str], None]) -> dict[str, Any]:
    plan = StreamPlan.make(quick)
    port = free_port()
    srv = Gunicorn(database_url, workdir, env={"STREAM_ENABLED": "1", "STREAM_PORT": str(port),
                                               "STREAM_MAX_SUBSCRIBERS": "5000"})
    srv.start()
    try:
        wait_stream_up(f"http://127.0.0.1:{port}/api/stream/health")
        order = plan.order()
        runs = []
        hour = 10
        retries = 0
        for i, n in enumerate(order):
            # The first run warms the new server up (its plans, caches, partitions): the first
            # baseline used to be its slowest run, which made the loss look smaller than it is.
            run_plan = replace(plan, readings=plan.readings // 3) if i == 0 else plan
            tries: list[dict[str, Any]] = []
            while True:
                hour += 1  # each run its own hour: nothing is a duplicate
                base = time.time() - hour * 3600
                # A token per run: it opens streams for STREAM_TOKEN_TTL_S (300 s), less than the phase.
                tok = requests.post(srv.url + "/api/stream/token", headers=srv.headers(), timeout=10).json()
                tries.append(one_run(srv, database_url, run_plan, n, tok["token"], tok["stream_url"], base, log))
                # Another job taking a good part of the 2 cores moves readings/s by a third: such a
                # run is done again (a bounded number of times; the choice looks only at the
                # other jobs' CPU, never at the result, and baselines get the same treatment).
                if i == 0 or _disturbance(tries[-1]) <= DISTURBED_CORES or retries >= MAX_RETRIES:
                    break
                retries += 1
                log(f"stream {n} subscribers: other jobs took {_disturbance(tries[-1]):.2f} cores; again")
            best = min(tries, key=_disturbance)
            best["tries"] = len(tries)
            runs.append(best)
    finally:
        srv.stop()
    warmup, runs = runs[0], runs[1:]
    base_idx = [i for i, r in enumerate(runs) if r["subscribers"] == 0]
    baselines = [runs[i]["readings_per_s"] for i in base_idx]
    by_n: dict[str, dict[str, Any]] = {}
    for n in plan.subscribers:
        mine = [(i, r) for i, r in enumerate(runs) if r["subscribers"] == n]
        # Each run against the baselines just before and after it: the machine drifts (other
        # jobs, the database's state) between runs, less within a neighbourhood.
        ratios = [r["readings_per_s"] / ((runs[max(b for b in base_idx if b < i)]["readings_per_s"] +
                                          runs[min(b for b in base_idx if b > i)]["readings_per_s"]) / 2)
                  for i, r in mine]
        by_n[str(n)] = combine([r for _, r in mine], ratios)
    # What the subscribers' work took of the machine: the stream process above its mean at the
    # baselines, plus the subscriber clients, in cores and as a share of all cores. Where
    # ingest is CPU-bound, that is about what it can lose; it does not move with other jobs.
    stream_idle = statistics.mean(runs[i]["cores"]["stream"] for i in base_idx)
    for w in by_n.values():
        extra = statistics.mean(r["cores"]["stream"] - stream_idle + r["cores"]["subscriber_clients"]
                                for r in w["runs"])
        w["subscribers_cores"] = round(extra, 3)
        w["subscribers_machine_share"] = round(extra / (os.cpu_count() or 1), 3)
    return {"plan": asdict(plan), "order": list(order), "retries": retries,
            "baseline_readings_per_s": statistics.mean(baselines),
            "baseline_load": ", ".join(str(runs[i]["load_average_1m"]) for i in base_idx),
            "baseline_runs": baselines, "baseline_cores": [runs[i]["cores"] for i in base_idx],
            "warmup_readings_per_s": warmup["readings_per_s"], "with": by_n}


DISTURBED_CORES = 0.3  # CPU of other jobs (and stolen by the hypervisor) above which a run is redone
MAX_RETRIES = 3  # for the whole phase: on a machine busy throughout, retrying is no cure


def _disturbance(run: dict[str, Any]) -> float:
    return run["cores"]["other"] + run["cores"]["stolen"]
