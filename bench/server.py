"""Start gunicorn the way `make run` does (gunicorn.conf.py, its defaults) and watch its workers."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import requests

ROOT = Path(__file__).resolve().parent.parent

# Generous limits so the rate limiter (backend/auth.py, when present) never throttles the benchmark.
GENEROUS_LIMITS = {"RATE_LIMIT_DEFAULT": "100000000/minute", "RATE_LIMIT_IP": "100000000/minute"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Gunicorn:
    """gunicorn -c gunicorn.conf.py [app]: the service (app=None) or a baseline app with the same settings."""

    def __init__(self, database_url: str, workdir: Path, app: str | None = None,
                 env: dict[str, str] | None = None, config: Path | None = None, root: Path | None = None) -> None:
        self.app = app
        # Another checkout or config file: only for A/B experiments (see docs/benchmarks.md).
        self.root = Path(root or ROOT)
        self.config = config or self.root / "gunicorn.conf.py"
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api_key = "bench-admin-" + secrets.token_hex(16)
        self.log_path = self.workdir / f"gunicorn-{(app or 'service').replace(':', '_')}.log"
        self.proc: subprocess.Popen | None = None
        # Only what must differ from `make run`: where to listen, which database, the key, quiet
        # logs, scratch directories, and rate limits out of the way. Worker/thread counts and
        # every ingest setting stay at their defaults (gunicorn.conf.py, backend/config.py).
        drop = ("GUNICORN_", "WEB_CONCURRENCY", "PYTEST_")
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(drop)},
            "DATABASE_URL": database_url,
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "ADMIN_API_KEY": self.api_key,
            "LOG_LEVEL": "WARNING",
            "DATA_DIR": str(self.workdir / "data"),
            "SPOOL_DIR": str(self.workdir / "spool"),
            "REDIS_URL": "",
            "STREAM_ENABLED": "0",  # the stream phase (bench/stream.py) turns it on
            **GENEROUS_LIMITS,
            **(env or {}),
        }

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    def start(self, wait: float = 60.0) -> Gunicorn:
        cmd = [sys.executable, "-m", "gunicorn", "-c", str(self.config)]
        if self.app:
            cmd.append(self.app)
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps writing to it
        self.proc = subprocess.Popen(cmd, cwd=self.root, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        log.close()
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                r = requests.get(self.url + "/health", headers=self.headers(), timeout=2)
                if r.status_code == 200 and len(self.worker_pids()) >= 1:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"gunicorn did not answer in {wait}s:\n{self.log_tail()}")

    def worker_pids(self) -> list[int]:
        if self.proc is None:
            return []
        try:
            return [c.pid for c in psutil.Process(self.proc.pid).children()]
        except psutil.NoSuchProcess:
            return []

    def all_pids(self) -> list[int]:
        return ([self.proc.pid] if self.proc else []) + self.worker_pids()

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(10)
        self.proc = None

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def __enter__(self) -> Gunicorn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ProcWatch:
    """Samples processes while a phase runs: peak RSS per gunicorn worker, CPU seconds per group.

    Groups: the gunicorn server (master and workers), the PostgreSQL backends connected to
    the benchmark's database (found in pg_stat_activity), and this benchmark process (its
    clients). With the machine's total busy CPU over the same interval, what is left is
    CPU used by everything else on the machine (other jobs, PostgreSQL's shared background
    processes) and the time the hypervisor gave to other guests (steal), so the report can
    say how disturbed a run was.
    """

    def __init__(self, server: Gunicorn | None, database_url: str | None = None, interval: float = 0.2) -> None:
        self.server = server
        self.database_url = database_url
        self.interval = interval
        self.peak_rss: dict[int, int] = {}
        self._start: dict[tuple[str, int], float] = {}
        self._last: dict[tuple[str, int], float] = {}
        self._initial = True
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="procwatch", daemon=True)
        self._pg = None
        self.wall = 0.0
        self.machine_busy_s = 0.0
        self.machine_total_s = 0.0
        self.steal_s = 0.0

    def _pg_pids(self) -> list[int]:
        if not self.database_url:
            return []
        try:
            if self._pg is None:
                import psycopg

                self._pg = psycopg.connect(self.database_url, autocommit=True)
            return [r[0] for r in self._pg.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")]
        except Exception:  # noqa: BLE001 - monitoring must never break a run
            return []

    def _sample(self) -> None:
        master = self.server.proc.pid if self.server and self.server.proc else None
        groups = [("server", pid) for pid in (self.server.all_pids() if self.server else [])]
        groups += [("postgres", pid) for pid in self._pg_pids()]
        groups.append(("bench", os.getpid()))
        for group, pid in groups:
            try:
                p = psutil.Process(pid)
                with p.oneshot():
                    rss = p.memory_info().rss
                    t = p.cpu_times()
            except psutil.Error:
                continue
            cpu = t.user + t.system
            # A process first seen after the start was born during the phase: all its CPU counts.
            self._start.setdefault((group, pid), cpu if self._initial else 0.0)
            self._last[(group, pid)] = cpu
            if group == "server" and pid != master:
                self.peak_rss[pid] = max(self.peak_rss.get(pid, 0), rss)
        self._initial = False

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> ProcWatch:
        self._t0 = time.monotonic()
        self._m0 = psutil.cpu_times()
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        if self._pg is not None:
            self._pg.close()
        self.wall = time.monotonic() - self._t0
        busy, idle = _busy_idle(psutil.cpu_times())
        busy0, idle0 = _busy_idle(self._m0)
        self.machine_busy_s = busy - busy0
        self.machine_total_s = self.machine_busy_s + idle - idle0
        # On a shared VM the hypervisor runs other guests on "our" cores; that time is neither
        # ours nor idle, and it was a third of the machine in some runs (vmstat `st`).
        self.steal_s = getattr(psutil.cpu_times(), "steal", 0.0) - getattr(self._m0, "steal", 0.0)

    def cpu_s(self, group: str) -> float:
        return sum(v - self._start[k] for k, v in self._last.items() if k[0] == group)

    @property
    def server_cpu_s(self) -> float:
        return self.cpu_s("server")

    def summary(self, extra_cpu_s: float = 0.0) -> dict[str, float]:
        """`extra_cpu_s`: CPU of processes sampled elsewhere (wrk), so 'other' excludes it."""
        peaks = sorted(self.peak_rss.values())
        ours = self.cpu_s("server") + self.cpu_s("postgres") + self.cpu_s("bench") + extra_cpu_s
        return {
            "workers": len(peaks),
            "peak_rss_mb_max": round(peaks[-1] / 2**20, 1) if peaks else 0.0,
            "peak_rss_mb_each": [round(p / 2**20, 1) for p in peaks],
            "server_cpu_s": round(self.cpu_s("server"), 2),
            "postgres_cpu_s": round(self.cpu_s("postgres"), 2),
            "bench_cpu_s": round(self.cpu_s("bench"), 2),
            "other_cpu_s": round(max(0.0, self.machine_busy_s - self.steal_s - ours), 2),
            "steal_s": round(self.steal_s, 2),
            "machine_busy_s": round(self.machine_busy_s, 2),
            "machine_total_s": round(self.machine_total_s, 2),
            "wall_s": round(self.wall, 2),
        }


def _busy_idle(t) -> tuple[float, float]:
    busy = sum(getattr(t, f, 0.0) for f in ("user", "nice", "system", "irq", "softirq", "steal"))
    return busy, t.idle + getattr(t, "iowait", 0.0)


def wait_for_quiet(max_wait: float, threshold: float = 0.25) -> float:
    """Wait (up to max_wait s) until other jobs leave the CPUs mostly idle; returns the last busy share."""
    deadline = time.monotonic() + max_wait
    while True:
        busy = psutil.cpu_percent(interval=2.0) / 100
        if busy <= threshold or time.monotonic() >= deadline:
            return busy
        print(f"[bench] the machine is {busy:.0%} busy before the start (other jobs); waiting up to"
              f" {deadline - time.monotonic():.0f} s more for it to calm down", flush=True)
