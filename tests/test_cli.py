"""The operator's command line: first-run admin key, `serve` with the embedded PostgreSQL."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import requests

from backend.cli import bootstrap_admin_key, build_parser
from tests.live_server import free_port, wait_for

ROOT = Path(__file__).resolve().parent.parent


def test_bootstrap_admin_key_is_random_private_and_stable(tmp_path):
    key = bootstrap_admin_key(tmp_path)
    path = tmp_path / "admin_api_key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(key) > 40 and key.startswith("tk_admin_")
    assert bootstrap_admin_key(tmp_path) == key  # kept across restarts
    assert bootstrap_admin_key(tmp_path / "other") != key


def test_cli_knows_its_commands():
    parser = build_parser()
    for argv in (["migrate"], ["partitions", "--months", "2"], ["serve"], ["keys", "list"]):
        assert parser.parse_args(argv).func


def test_clean_stop_of_serve_with_embedded_postgres_logs_no_error(tmp_path):
    # The zero-config path of `make run`: no DATABASE_URL, so serve starts the embedded
    # PostgreSQL in DATA_DIR, runs gunicorn, and on SIGTERM stops both.
    port = free_port()
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GUNICORN_", "PYTEST_"))}
    env.update(DATABASE_URL="", DATA_DIR=str(data), SPOOL_DIR=str(tmp_path / "spool"), HOST="127.0.0.1",
               PORT=str(port), WEB_CONCURRENCY="1", GUNICORN_THREADS="2", LOG_LEVEL="INFO", REDIS_URL="")
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "backend", "serve"], cwd=ROOT, env=env,
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: _healthy(f"http://127.0.0.1:{port}/health") or proc.poll() is not None, timeout=120)
            assert proc.poll() is None, log_path.read_text()[-3000:]
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    output = log_path.read_text(errors="replace")
    assert code == 0, output[-3000:]
    assert "Successful postgres command" in output and "'stop')" in output  # it did stop the server
    errors = [line for line in output.splitlines() if " ERROR " in line or "Failed to stop" in line]
    assert errors == [], output[-3000:]
    assert not (data / "pg" / "postmaster.pid").exists()


def _healthy(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False
