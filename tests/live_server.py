"""A real gunicorn running the app on a loopback port, for end-to-end tests and benchmarks."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import requests

ROOT = Path(__file__).resolve().parent.parent


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.02) -> Any:
    """Poll until `predicate()` is truthy and return it; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """gunicorn + the app against `database_url`; start/stop/kill it like an operator would."""

    def __init__(self, database_url: str, workdir: Path, env: dict[str, str] | None = None,
                 workers: int = 2, threads: int = 8) -> None:
        self.database_url = database_url
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api_key = "test-admin-" + secrets.token_hex(16)
        self.proc: subprocess.Popen | None = None
        self.log_path = self.workdir / "gunicorn.log"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("GUNICORN_", "PYTEST_"))},
            "DATABASE_URL": database_url,
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "WEB_CONCURRENCY": str(workers),
            "GUNICORN_THREADS": str(threads),
            "ADMIN_API_KEY": self.api_key,
            "SPOOL_DIR": str(self.workdir / "spool"),
            "DATA_DIR": str(self.workdir / "data"),
            "TESTING": "1",
            "LOG_LEVEL": "WARNING",
            "REDIS_URL": "",
            "FLUSH_INTERVAL": "0.2",
            "RETRY_BASE_DELAY": "0.05",
            "RETRY_MAX_DELAY": "1",
            "ACK_TIMEOUT": "5",
            "STREAM_ENABLED": "0",  # tests that stream turn it on with their own STREAM_PORT
            **(env or {}),
        }

    def start(self, wait: float = 30.0) -> LiveServer:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py")],
            cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if requests.get(self.url + "/health", timeout=1).status_code in (200, 503):
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"gunicorn did not answer in {wait}s:\n{self.log_tail()}")

    def stop(self, timeout: float = 30.0) -> int | None:
        """Graceful stop (SIGTERM to the master), as systemd or docker stop would."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        code = self.proc.returncode
        self.proc = None
        return code

    def kill(self) -> None:
        """kill -9 of the master and every worker (the whole process group)."""
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)
            self.proc = None

    def worker_pids(self) -> list[int]:
        if self.proc is None:
            return []
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    def signal_master(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def headers(self, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}", **extra}

    def post(self, path: str, data: Any = None, json: Any = None, **kw: Any) -> requests.Response:
        headers = {**self.headers(), **kw.pop("headers", {})}
        return requests.post(self.url + path, data=data, json=json, headers=headers, timeout=kw.pop("timeout", 30),
                             **kw)

    def get(self, path: str, **kw: Any) -> requests.Response:
        headers = {**self.headers(), **kw.pop("headers", {})}
        return requests.get(self.url + path, headers=headers, timeout=kw.pop("timeout", 30), **kw)

    def query(self, sql: str, *params: Any) -> list[tuple]:
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            return conn.execute(sql, params or None).fetchall()

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def __enter__(self) -> LiveServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
