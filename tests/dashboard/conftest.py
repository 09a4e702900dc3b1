"""Browser tests: Playwright (PyPI) driving Debian's Chromium against a real gunicorn.

No `playwright install`: the browser is /usr/bin/chromium (`.ci/run` installs it when
missing). Skipped, saying why, only when that binary is absent.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.live.conftest import stream_env, wait_stream_up
from tests.live_server import ROOT, LiveServer

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
# The screenshots docs/dashboard.md shows: `DASHBOARD_SCREENSHOTS=docs/img make test` renews
# them; otherwise they go to a temporary folder, so a test run leaves the tree as it was.
SHOTS = Path(os.environ.get("DASHBOARD_SCREENSHOTS") or tempfile.mkdtemp(prefix="dashboard-shots-"))
if not SHOTS.is_absolute():
    SHOTS = ROOT / SHOTS
OFFLINE_AFTER_S = 3  # DEVICE_OFFLINE_AFTER_S for these servers: "silent" within seconds



# package: Playwright's sync API keeps an event loop running in this thread while it is open, and
# asyncio.run() in later tests refuses to start beside it
@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium; .ci/run does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


def make_dash_server(make_live_server, stream: bool = True) -> LiveServer:
    """gunicorn (2 workers) with, when `stream`, its SSE stream process on a free port."""
    env = {"DEVICE_OFFLINE_AFTER_S": str(OFFLINE_AFTER_S), "ALERT_SILENCE_CHECK_S": "1"}
    if stream:
        env.update(stream_env())
    server = make_live_server(env=env)
    if stream:
        wait_stream_up(server)
    return server


@pytest.fixture
def dash_server(make_live_server) -> LiveServer:
    return make_dash_server(make_live_server)


_open_contexts: list[BrowserContext] = []


@pytest.fixture(autouse=True)
def _close_tabs(make_live_server) -> Iterator[None]:  # torn down before the servers
    """Each test's tabs close before its server stops (their timers would poll a dead port)."""
    yield
    while _open_contexts:
        _open_contexts.pop().close()


def new_context(browser: Browser) -> BrowserContext:
    context = browser.new_context(viewport={"width": 1280, "height": 860}, timezone_id="UTC")
    _open_contexts.append(context)
    return context


def open_page(browser: Browser, server: LiveServer, key: str | None = None, path: str = "/") -> Page:
    """A fresh tab on the dashboard, signed in through the page's own form."""
    context = new_context(browser)
    page = context.new_page()
    page.goto(server.url + path)
    page.fill("#key-input", key or server.api_key)
    page.click("#signin-form button")
    page.wait_for_selector("#app:not([hidden])")
    return page


def chart_has(page: Page, value: float, timeout_ms: float) -> None:
    page.wait_for_function(
        "(v) => { const c = document.getElementById('chart');"
        " return !!c && Array.isArray(c.data) && c.data.some((t) => (t.y || []).includes(v)); }",
        arg=value, timeout=timeout_ms)


def iso(ts: datetime) -> str:
    return ts.isoformat().replace("+00:00", "Z")


def post_history(server: LiveServer, devices: int = 3, minutes: float = 10, gap: tuple[float, float] | None = None,
                 prefix: str = "sim-") -> None:
    """Backdated demo data from the producer's signal functions, one sample a second."""
    from backend.producer.signals import fleet

    fl = fleet(devices, prefix, seed=13)
    now = datetime.now(UTC)
    start = now - timedelta(minutes=minutes)
    msgs = []
    for t in range(int(minutes * 60)):
        if gap and gap[0] <= t < gap[1]:
            continue
        for d in fl:
            msgs.append({"device_id": d.device_id, "timestamp": iso(start + timedelta(seconds=t)),
                         "signals": d.sample(float(t))})
    for i in range(0, len(msgs), 1000):
        r = server.post("/api/telemetry", json=msgs[i:i + 1000])
        assert r.status_code == 200, r.text


def shot(page: Page, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / name
    page.screenshot(path=str(path))
    return path


@contextmanager
def producing(server: LiveServer, device_ids: list[str], every_s: float = 0.5) -> Iterator[None]:
    """Devices that keep sending (seed 002 signals, time of now) while the block runs."""
    import random

    from backend.producer.signals import Device

    devices = [Device(d, random.Random(i), phase_s=i * 1.7) for i, d in enumerate(device_ids)]
    stop = threading.Event()

    def loop() -> None:
        t = 0.0
        while not stop.is_set():
            msgs = [{"device_id": d.device_id, "timestamp": iso(datetime.now(UTC)), "signals": d.sample(t)}
                    for d in devices]
            server.post("/api/telemetry", json=msgs)
            t += every_s
            stop.wait(every_s)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(10)
