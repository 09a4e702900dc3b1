"""Load generators: wrk for many small requests, keep-alive Python clients for big bodies and latency runs."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

BENCH_DIR = Path(__file__).resolve().parent

WRK_MISSING = """wrk (the HTTP load generator) is not installed.
Install it from the Debian/Ubuntu packages:  sudo apt-get update && sudo apt-get install -y wrk
(macOS: brew install wrk). Then run `make bench` again."""


def wrk_path() -> str | None:
    return shutil.which("wrk")


def wrk_version() -> str:
    exe = wrk_path()
    if not exe:
        return "not installed"
    out = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout
    return out.splitlines()[0].strip() if out else "unknown"


def run_wrk(script: str, url: str, args: Sequence[str], connections: int, duration: float,
            threads: int = 2, timeout: float = 10.0) -> dict:
    """Run wrk with one of our Lua scripts; its `done()` prints one BENCH_JSON line.

    The CPU wrk used comes from the kernel's rusage of the child (os.wait4), which counts
    every thread of it exactly.
    """
    exe = wrk_path()
    if not exe:
        raise RuntimeError(WRK_MISSING)
    cmd = [exe, f"-t{threads}", f"-c{connections}", f"-d{max(1, round(duration))}s", f"--timeout={timeout:g}s",
           "-s", str(BENCH_DIR / script), url, "--", *args]
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read().decode(errors="replace")
    line = next((ln for ln in text.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed (exit {proc.returncode}): {' '.join(cmd)}\n{text}")
    result = json.loads(line[len("BENCH_JSON "):])
    secs = result["duration_us"] / 1e6
    ok = result["requests"] - result["status_errors"]
    result.update(
        ok=ok,
        seconds=secs,
        rps=ok / secs if secs else 0.0,
        wrk_cpu_s=usage.ru_utime + usage.ru_stime,
        threads=threads,
        connections=connections,
        output=text,
    )
    return result


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (pct in 0..100) of unsorted values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, int(-(-pct * len(ordered) // 100)) - 1))
    return ordered[k]


@dataclass
class ClientRun:
    seconds: float = 0.0
    requests: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    client_cpu_s: float = 0.0

    @property
    def ok(self) -> int:
        return sum(n for s, n in self.statuses.items() if 200 <= s < 300)


def _conn(url: str) -> http.client.HTTPConnection:
    parts = urlsplit(url)
    return http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)


def post_all(url: str, path: str, work: Sequence[Sequence[tuple[dict[str, str], bytes]]]) -> ClientRun:
    """One thread and one keep-alive connection per client; each sends its (headers, body) list in order."""
    run = ClientRun()
    lock = threading.Lock()
    start = threading.Barrier(len(work) + 1)

    def client(items: Sequence[tuple[dict[str, str], bytes]]) -> None:
        conn = _conn(url)
        conn.connect()
        start.wait()
        local: list[float] = []
        statuses: dict[int, int] = {}
        try:
            for headers, body in items:
                t = time.perf_counter()
                conn.request("POST", path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                local.append((time.perf_counter() - t) * 1000)
                statuses[resp.status] = statuses.get(resp.status, 0) + 1
                if resp.status >= 300 and len(run.errors) < 5:
                    run.errors.append(f"{resp.status}: {data[:300]!r}")
        except (OSError, http.client.HTTPException) as exc:
            run.errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            conn.close()
            with lock:
                run.latencies_ms.extend(local)
                for s, n in statuses.items():
                    run.statuses[s] = run.statuses.get(s, 0) + n

    threads = [threading.Thread(target=client, args=(items,), daemon=True) for items in work]
    for t in threads:
        t.start()
    cpu0 = time.process_time()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    run.seconds = time.perf_counter() - t0
    run.client_cpu_s = time.process_time() - cpu0
    run.requests = len(run.latencies_ms)
    return run


def get_sequential(url: str, paths: Sequence[str], headers: dict[str, str],
                   check=None) -> ClientRun:
    """One keep-alive client, one request at a time: latency without queueing."""
    run = ClientRun()
    conn = _conn(url)
    t0 = time.perf_counter()
    for path in paths:
        t = time.perf_counter()
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        run.latencies_ms.append((time.perf_counter() - t) * 1000)
        run.statuses[resp.status] = run.statuses.get(resp.status, 0) + 1
        problem = f"{resp.status}: {data[:300]!r}" if resp.status != 200 else (check(data) if check else None)
        if problem and len(run.errors) < 5:
            run.errors.append(problem)
    run.seconds = time.perf_counter() - t0
    run.requests = len(paths)
    conn.close()
    return run
