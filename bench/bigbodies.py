"""Phase: eight concurrent largest bodies at one worker, with and without MAX_READINGS_IN_FLIGHT.

Issue 11 measured one 7.5 MB body of 344,000 readings raising a worker from 48 to 301 MiB,
and eight at once 951 MiB per worker. Here one gunicorn worker (so all eight land on it;
threads and every other setting at their defaults) takes eight such bodies at once, twice:
with the default in-flight bound, and with the bound switched off (MAX_READINGS_IN_FLIGHT=0,
the code before the bound). With the bound each client re-sends its body after Retry-After
until it gets a 2xx, as a gateway does, so every body is stored in the end; without it each
body is sent once. The figures: the worker's peak RSS, the answers, the readings stored.

    python -m bench.bigbodies [--quick]   # this phase alone, on a scratch database
"""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path
from typing import Any

import requests

from .server import Gunicorn, ProcWatch

CLIENTS = 8
FULL_READINGS = 344_000  # the body: ~7.5 MB of raw lines
QUICK_READINGS = 20_000


def make_body(device: str, readings: int, base_ts: float) -> bytes:
    # Four readings a line with the seed's drone fields: ~22 bytes a reading, as in the issue.
    lines = (f"device_id:{device},ts:{base_ts + i / 100:.2f},gps_lat:{52 + i * 1e-6:.6f},"
             f"gps_lon:{4 + i * 1e-6:.6f},alt:{100 + i % 1000 / 10:.2f},bat_v:{12 + i % 100 / 100:.3f}"
             for i in range(readings // 4))
    return "\n".join(lines).encode()


def _send_until_stored(url: str, headers: dict[str, str], body: bytes, out: dict[str, Any],
                       deadline: float, retry: bool) -> None:
    try:
        _send(url, headers, body, out, deadline, retry)
    finally:
        out["done_s"] = time.monotonic()


def _send(url: str, headers: dict[str, str], body: bytes, out: dict[str, Any], deadline: float, retry: bool) -> None:
    session = requests.Session()
    while time.monotonic() < deadline:
        try:
            r = session.post(url, data=body, headers=headers, timeout=max(1.0, deadline - time.monotonic()))
        except requests.RequestException as exc:
            out["errors"].append(type(exc).__name__)
            if not retry:
                return
            time.sleep(1.0)  # a gateway's back-off after a broken connection
            continue
        out["statuses"].append(r.status_code)
        if r.status_code < 300:
            out["accepted"] = r.json().get("accepted", 0)
            return
        if r.status_code != 503 or not retry:
            if r.status_code != 503:
                out["errors"].append(f"{r.status_code}: {r.text[:200]}")
            return
        out["retry_after"].append(int(r.headers.get("Retry-After", "1")))
        time.sleep(out["retry_after"][-1])  # what the server asked for


def run_case(database_url: str, workdir: Path, readings: int, env: dict[str, str], tag: str,
             retry: bool = True, timeout: float = 300.0) -> dict[str, Any]:
    srv = Gunicorn(database_url, workdir, env={"WEB_CONCURRENCY": "1", **env}).start()
    try:
        base = time.time() - 6 * 3600
        # Each body spans readings/400 s of timestamps (4 a line, 100 lines a second), all in the past.
        bodies = [make_body(f"big-{tag}-{i}", readings, base + i * (readings / 400 + 60)) for i in range(CLIENTS)]
        idle_rss = ProcWatch(srv)
        with idle_rss:
            pass
        results = [{"statuses": [], "retry_after": [], "errors": [], "accepted": 0, "done_s": None}
                   for _ in bodies]
        headers = {**srv.headers(), "Content-Type": "text/plain"}
        started = time.monotonic()
        with ProcWatch(srv, database_url) as watch:
            threads = [threading.Thread(target=_send_until_stored,
                                        args=(srv.url + "/telemetry/parse", headers, b, out, started + timeout, retry))
                       for b, out in zip(bodies, results, strict=True)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        status = requests.get(srv.url + "/telemetry/batch/status", headers=srv.headers(), timeout=10).json()
    finally:
        srv.stop()
    import psycopg

    with psycopg.connect(database_url, autocommit=True) as conn:
        stored = conn.execute("SELECT count(*) FROM telemetry_readings WHERE device_id LIKE %s",
                              (f"big-{tag}-%",)).fetchone()[0]
    statuses = [s for out in results for s in out["statuses"]]
    summary = watch.summary()
    return {
        "env": env,
        "retry": retry,
        "clients": CLIENTS,
        "readings_per_body": readings,
        "body_mb": round(len(bodies[0]) / 1e6, 2),
        "idle_rss_mb": max(idle_rss.summary()["peak_rss_mb_each"], default=0.0),
        "peak_rss_mb": summary["peak_rss_mb_max"],
        "seconds_until_last_answer": round(max((o["done_s"] or time.monotonic()) for o in results) - started, 1),
        "responses_2xx": sum(1 for s in statuses if s < 300),
        "responses_503": statuses.count(503),
        "errors": [e for out in results for e in out["errors"]],
        "acknowledged_readings": sum(o["accepted"] for o in results),
        "stored_readings": stored,
        "peak_readings_in_flight": (status.get("admission") or {}).get("peak_readings_in_flight"),
    }


def big_bodies(database_url: str, workdir: Path, quick: bool) -> dict[str, Any]:
    """Both cases; the bounded one first (the unbounded one leaves a worker with more heap)."""
    readings = QUICK_READINGS if quick else FULL_READINGS
    return {
        "bounded": run_case(database_url, workdir / "bounded", readings, {}, "b"),
        # Sent once each: re-sending into an unbounded worker only piles more bodies on (measured:
        # 2.1 GB and no 2xx in 10 minutes), and the figure is for eight sent at once.
        "unbounded": run_case(database_url, workdir / "unbounded", readings, {"MAX_READINGS_IN_FLIGHT": "0"}, "u",
                              retry=False, timeout=120.0),
    }


def render(r: dict[str, Any]) -> list[str]:
    lines = ["", f"### Eight concurrent largest bodies at one worker ({r['bounded']['body_mb']} MB,"
                 f" {r['bounded']['readings_per_body']:,} readings each)", "",
             "One gunicorn worker, default threads. `bounded`: each client re-sends after Retry-After until its"
             " body is stored; `unbounded` (MAX_READINGS_IN_FLIGHT=0, as before the bound): each body sent once,"
             " so its 503s are storage time-outs, not refusals.", "",
             "| Case | worker RSS idle -> peak | seconds until the last answer | 2xx / 503 | readings acknowledged /"
             " stored | peak readings in flight |", "|---|---|---|---|---|---|"]
    for case in ("bounded", "unbounded"):
        x = r[case]
        limit = x["env"].get("MAX_READINGS_IN_FLIGHT", "default")
        lines.append(f"| {case} (MAX_READINGS_IN_FLIGHT={limit}) | {x['idle_rss_mb']:.0f} -> {x['peak_rss_mb']:.0f} MB"
                     f" | {x['seconds_until_last_answer']:.1f} | {x['responses_2xx']} / {x['responses_503']} |"
                     f" {x['acknowledged_readings']:,} / {x['stored_readings']:,} |"
                     f" {x['peak_readings_in_flight'] if x['peak_readings_in_flight'] is not None else ''} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    import json
    import tempfile

    from .run import resolve_admin_url, scratch_database

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--admin-url", default=None)
    args = ap.parse_args(argv)
    admin, _handle = resolve_admin_url(args.admin_url)
    with scratch_database(admin, f"bench_big_{int(time.time())}") as url:
        r = big_bodies(url, Path(tempfile.mkdtemp(prefix="bench-big-")), args.quick)
        print(json.dumps(r, indent=1))
        print("\n".join(render(r)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
