"""`make demo` as a newcomer runs it: the service and the producer start, a live chart shows."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import requests

from tests.dashboard.conftest import new_context
from tests.live_server import ROOT, free_port, wait_for


def test_demo_shows_a_live_chart_and_stops_cleanly(browser, database_url, tmp_path):
    port, stream_port = free_port(), free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("GUNICORN_", "PYTEST_"))},
           "DATABASE_URL": database_url, "PORT": str(port), "STREAM_PORT": str(stream_port),
           "DATA_DIR": str(tmp_path / "data"), "SPOOL_DIR": str(tmp_path / "spool"), "LOG_LEVEL": "WARNING",
           "ADMIN_API_KEY": "", "REDIS_URL": ""}
    started = time.monotonic()
    log = open(tmp_path / "demo.log", "wb")
    demo = subprocess.Popen([sys.executable, "-m", "backend.producer.demo", "--devices", "2"], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            try:
                return requests.get(url + "/health", timeout=2).status_code == 200
            except requests.RequestException:
                return False

        wait_for(up, timeout=90, interval=0.5)
        key = wait_for(lambda: (tmp_path / "data" / "admin_api_key").read_text().strip(), timeout=10)
        page = new_context(browser).new_page()
        page.goto(url + "/#/device/sim-1")
        page.fill("#key-input", key)
        page.click("#signin-form button")
        page.wait_for_function("() => window.dashboardLive && window.dashboardLive.mode === 'stream'"
                               " && document.getElementById('chart-info').dataset.source", timeout=60_000)
        n = page.evaluate("() => document.getElementById('chart').data[0].x.length")
        page.wait_for_function("(n) => document.getElementById('chart').data[0].x.length > n", arg=n,
                               timeout=30_000)
        print(f"\nmake demo: live chart moving {time.monotonic() - started:.1f} s after the start")
        page.context.close()
    finally:
        demo.send_signal(signal.SIGTERM)
        code = demo.wait(90)
    assert code == 0, (tmp_path / "demo.log").read_text()[-2000:]
    try:
        os.killpg(demo.pid, 0)
        leftover = True
    except ProcessLookupError:
        leftover = False
    assert not leftover, "processes of the demo outlived it"
