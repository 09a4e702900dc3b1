"""Load generator that keeps the service honest about its 2xx.

Threads post raw lines with a unique (device, seq) and an explicit, distinct measurement
time each (`device_id:lg-<run>-3,seq:1234,ts:<iso>`), retry a body until it is
acknowledged (503, connection errors and kill -9 included), and record every
acknowledged (device, seq) outside the server, with the wall-clock time of the 2xx.
`verify()` then compares with PostgreSQL:

    lost         acknowledged but not in the database          (must be 0)
    duplicates   rows beyond the first for one (device, seq)    (must be 0)
    ts_mismatch  a row whose measurement time is not the one sent
    late_received_at  a row whose received_at is after its 2xx (a replay that
                 rewrote received_at would show here)

Run against any server:

    python -m tests.loadgen --url http://127.0.0.1:5000 --api-key KEY \\
        --database-url postgresql://... --seconds 30 --threads 8
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import requests


@dataclass
class Verdict:
    acked: int
    rows: int
    lost: int
    duplicates: int
    extra: int  # in the database without a 2xx (a retried or unanswered request): allowed
    ts_mismatch: int
    late_received_at: int
    lost_sample: list[tuple[str, int]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.duplicates == 0 and self.ts_mismatch == 0 and self.late_received_at == 0

    def line(self) -> str:
        return (f"acked={self.acked} rows={self.rows} lost={self.lost} duplicates={self.duplicates}"
                f" extra={self.extra} ts_mismatch={self.ts_mismatch} late_received_at={self.late_received_at}")


@dataclass
class LoadStats:
    posts: int = 0
    ok: int = 0
    committed: int = 0
    spooled: int = 0
    s503: int = 0
    s503_retry_after: int = 0
    conn_errors: int = 0
    other: Counter = field(default_factory=Counter)
    retry_after_values: Counter = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies_ms)

        def pct(p: float) -> float | None:
            return round(lat[min(len(lat) - 1, int(p * len(lat)))], 1) if lat else None

        return {"posts": self.posts, "2xx": self.ok, "committed": self.committed, "spooled": self.spooled,
                "503": self.s503, "503_with_retry_after": self.s503_retry_after, "conn_errors": self.conn_errors,
                "other": dict(self.other), "retry_after": dict(self.retry_after_values),
                "p50_ms": pct(0.5), "p99_ms": pct(0.99), "max_ms": pct(1.0)}


class LoadGen:
    def __init__(self, url: str, headers: dict[str, str] | None = None, *, threads: int = 4,
                 lines_per_post: int = 5, run_id: str | None = None, path: str = "/telemetry",
                 timeout: float = 15.0, max_backoff: float = 0.25, pause: float = 0.0) -> None:
        self.url = url.rstrip("/")
        self.headers = {"Content-Type": "text/plain", **(headers or {})}
        self.threads = threads
        self.lines_per_post = lines_per_post
        self.run_id = run_id or secrets.token_hex(3)
        self.prefix = f"lg-{self.run_id}-"
        self.path = path
        self.timeout = timeout
        self.max_backoff = max_backoff
        self.pause = pause
        self.base = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
        self.stats = LoadStats()
        self.acked: dict[tuple[str, int], float] = {}  # (device, seq) -> wall time of the 2xx
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []
        self._paused = threading.Event()
        self._paused.set()

    @classmethod
    def for_server(cls, server: Any, **kw: Any) -> LoadGen:
        return cls(server.url, server.headers(), **kw)

    def ts_for(self, seq: int) -> datetime:
        return self.base + timedelta(milliseconds=seq)

    # ---- running ---------------------------------------------------------------------

    def start(self) -> LoadGen:
        for i in range(self.threads):
            t = threading.Thread(target=self._worker, args=(f"{self.prefix}{i}",), daemon=True, name=f"loadgen-{i}")
            t.start()
            self._workers.append(t)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        for t in self._workers:
            t.join(timeout)

    def run_for(self, seconds: float) -> LoadGen:
        self.start()
        time.sleep(seconds)
        self.stop()
        return self

    def hold(self) -> None:
        """Pause posting (bodies in flight finish)."""
        self._paused.clear()

    def resume(self) -> None:
        self._paused.set()

    def _worker(self, device: str) -> None:
        session = requests.Session()
        seq = 0
        while not self._stop.is_set():
            self._paused.wait(0.5)
            if not self._paused.is_set():
                continue
            seqs = list(range(seq + 1, seq + 1 + self.lines_per_post))
            seq = seqs[-1]
            body = "\n".join(f"device_id:{device},seq:{s},ts:{self.ts_for(s).isoformat()}" for s in seqs)
            # The same body is retried until it is acknowledged: that is what a gateway does.
            while True:
                if self._stop.is_set():
                    return
                started = time.monotonic()
                try:
                    r = session.post(self.url + self.path, data=body, headers=self.headers, timeout=self.timeout)
                except requests.RequestException:
                    with self._lock:
                        self.stats.posts += 1
                        self.stats.conn_errors += 1
                    session.close()
                    session = requests.Session()
                    time.sleep(0.05 + random.random() * 0.05)
                    continue
                elapsed = (time.monotonic() - started) * 1000
                now = time.time()
                with self._lock:
                    st = self.stats
                    st.posts += 1
                    if r.status_code in (200, 207):
                        st.ok += 1
                        st.latencies_ms.append(elapsed)
                        durability = _durability(r)
                        if durability == "spooled":
                            st.spooled += 1
                        elif durability == "committed":
                            st.committed += 1
                        for s in seqs:
                            self.acked[(device, s)] = now
                    elif r.status_code == 503:
                        st.s503 += 1
                        ra = r.headers.get("Retry-After")
                        if ra:
                            st.s503_retry_after += 1
                            st.retry_after_values[ra] += 1
                    else:
                        st.other[r.status_code] += 1
                if r.status_code in (200, 207):
                    break
                if r.status_code == 503:
                    ra = float(r.headers.get("Retry-After") or 1)
                    time.sleep(min(ra, self.max_backoff) * (0.5 + random.random() / 2))
                else:
                    time.sleep(0.1)
            if self.pause:
                time.sleep(self.pause)

    # ---- checking --------------------------------------------------------------------

    def verify(self, database_url: str) -> Verdict:
        with psycopg.connect(database_url, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT device_id, value::bigint, count(*), min(ts), max(ts), max(received_at)"
                " FROM telemetry_readings WHERE device_id LIKE %s AND metric = 'seq' GROUP BY 1, 2",
                (self.prefix + "%",),
            ).fetchall()
        with self._lock:
            acked = dict(self.acked)
        present: dict[tuple[str, int], tuple] = {(d, s): (n, lo, hi, rx) for d, s, n, lo, hi, rx in rows}
        lost = [k for k in acked if k not in present]
        duplicates = sum(n - 1 for n, *_ in present.values())
        ts_mismatch = sum(1 for (_d, s), (_n, lo, hi, _rx) in present.items()
                          if lo != self.ts_for(s) or hi != self.ts_for(s))
        late = sum(1 for k, t in acked.items() if k in present and present[k][3].timestamp() > t + 0.001)
        return Verdict(acked=len(acked), rows=sum(n for n, *_ in present.values()), lost=len(lost),
                       duplicates=duplicates, extra=len([k for k in present if k not in acked]),
                       ts_mismatch=ts_mismatch, late_received_at=late, lost_sample=sorted(lost)[:10])

    def wait_until_stored(self, database_url: str, timeout: float = 60.0) -> Verdict:
        """Poll until every acknowledged reading is in the database (or `timeout`); the last verdict."""
        deadline = time.monotonic() + timeout
        verdict = self.verify(database_url)
        while verdict.lost and time.monotonic() < deadline:
            time.sleep(0.25)
            verdict = self.verify(database_url)
        return verdict


def _durability(r: requests.Response) -> str | None:
    try:
        return r.json().get("durability")
    except ValueError:
        return None


# ---- measurement helpers used by the reliability tests --------------------------------


class RssSampler:
    """Peak resident memory of a gunicorn master's workers, sampled in the background."""

    def __init__(self, pids: Any, interval: float = 0.2) -> None:
        self._pids = pids  # callable returning the current worker pids
        self.interval = interval
        self.peak_worker_rss = 0
        self.peak_total_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            total = 0
            for pid in self._pids():
                try:
                    rss = psutil.Process(pid).memory_info().rss
                except (psutil.Error, OSError):
                    continue
                total += rss
                self.peak_worker_rss = max(self.peak_worker_rss, rss)
            self.peak_total_rss = max(self.peak_total_rss, total)
            self._stop.wait(self.interval)

    @property
    def peak_worker_mib(self) -> float:
        return round(self.peak_worker_rss / 2**20, 1)


def worker_statuses(server: Any, attempts: int = 12) -> dict[int, dict[str, Any]]:
    """/telemetry/batch/status of as many workers as answer in `attempts` fresh connections."""
    seen: dict[int, dict[str, Any]] = {}
    for _ in range(attempts):
        try:
            r = requests.get(server.url + "/telemetry/batch/status?scope=worker", headers=server.headers(), timeout=10)
            body = r.json()
        except (requests.RequestException, ValueError):
            continue
        if r.status_code != 200 or "worker_pid" not in body:
            # A refusal is no worker's status (a full-suite run once got one without "spool" here).
            print(f"worker_statuses: {r.status_code} {str(body)[:300]}", file=sys.stderr)
            continue
        seen[body["worker_pid"]] = body
    return seen


def record_result(name: str, figures: dict[str, Any]) -> None:
    """Print a scenario's figures; also append them to $RELIABILITY_RESULTS (JSON lines) when set."""
    line = json.dumps({"scenario": name, **figures}, default=str, sort_keys=True)
    print(f"\n[reliability] {line}", file=sys.stderr)
    path = os.environ.get("RELIABILITY_RESULTS")
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", required=True)
    ap.add_argument("--api-key", default=os.environ.get("ADMIN_API_KEY", ""))
    ap.add_argument("--database-url", required=True, help="to compare the acknowledged readings with")
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--lines", type=int, default=5, help="lines (readings) per post")
    ap.add_argument("--drain-timeout", type=float, default=120)
    args = ap.parse_args(argv)
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    lg = LoadGen(args.url, headers, threads=args.threads, lines_per_post=args.lines).run_for(args.seconds)
    verdict = lg.wait_until_stored(args.database_url, args.drain_timeout)
    print(json.dumps(lg.stats.summary()))
    print(verdict.line())
    return 0 if verdict.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
