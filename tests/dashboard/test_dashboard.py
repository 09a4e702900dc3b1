"""The dashboard in a real browser against a real service (issue 13's "Done when")."""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import urlsplit

import pytest

from tests.dashboard.conftest import (
    OFFLINE_AFTER_S,
    chart_has,
    iso,
    make_dash_server,
    new_context,
    open_page,
    post_history,
    producing,
    shot,
)
from tests.live_server import wait_for

GREEN, RED = "rgb(26, 158, 63)", "rgb(212, 42, 42)"


def _live_mode(page) -> str:
    page.wait_for_function("() => window.dashboardLive && ['stream', 'polling'].includes(window.dashboardLive.mode)",
                           timeout=15_000)
    return page.evaluate("() => window.dashboardLive.mode")


@pytest.mark.parametrize("path", ["stream", "polling"])
def test_posted_reading_appears_in_the_open_chart_within_2_s(browser, make_live_server, path):
    # "stream": the page gets readings over SSE; "polling": the service runs without its stream
    # process, the page's EventSource fails and it falls back to polling the query API.
    dash_server = make_dash_server(make_live_server, stream=path == "stream")
    # 10 minutes of seed-002 signals with a 60 s hole in the middle: drawn as a gap.
    post_history(dash_server, devices=3, minutes=10, gap=(240, 300))
    page = open_page(browser, dash_server, path="/#/device/sim-1")
    page.wait_for_function("() => document.getElementById('chart-info').dataset.source", timeout=15_000)
    traces = page.evaluate("() => document.getElementById('chart').data.map((t) => [t.name, t.y.length,"
                           " t.y.filter((v) => v === null).length])")
    assert {name for name, _, _ in traces} == {"sine_wave", "cosine_wave", "random_noise", "random_walk",
                                               "damped_oscillation"}
    assert all(n > 500 and nulls == 1 for _, n, nulls in traces), traces  # one gap, drawn as a null
    assert _live_mode(page) == path
    page.evaluate("() => { window.__sameDocument = true; }")
    r = dash_server.post("/api/telemetry?device_id=sim-1",
                         json={"timestamp": iso(datetime.now(UTC)), "signals": {"sine_wave": 42.4242}})
    assert r.status_code == 200, r.text
    chart_has(page, 42.4242, timeout_ms=2_000)  # the acceptance bound: within 2 s of the 200
    assert page.evaluate("() => window.__sameDocument === true"), "the page reloaded"
    print(f"\nlive path exercised: {path}")
    if path == "polling":
        return
    with producing(dash_server, ["sim-1"]):  # live points keep arriving for the screenshot
        page.wait_for_selector("#device-status.online", timeout=10_000)
        before = page.evaluate("() => document.getElementById('chart').data[0].x.length")
        page.wait_for_function("(n) => document.getElementById('chart').data[0].x.length >= n + 4", arg=before,
                               timeout=15_000)
        shot(page, "device.png")


def test_silent_device_turns_offline_on_the_overview(browser, dash_server):
    post_history(dash_server, devices=3, minutes=3)
    row = '#devices tr[data-device-id="quiet-1"]'
    busy = '#devices tr[data-device-id="sim-1"]'
    with producing(dash_server, ["sim-1", "sim-2"]):  # two devices keep sending throughout
        page = open_page(browser, dash_server)
        r = dash_server.post("/api/telemetry?device_id=quiet-1",
                             json={"timestamp": iso(datetime.now(UTC)), "signals": {"level": 1.5}})
        assert r.status_code == 200, r.text
        page.wait_for_selector(f'{row}[data-status="online"]', timeout=10_000)
        assert page.eval_on_selector(f"{row} .dot", "(e) => getComputedStyle(e).color") == GREEN
        # quiet-1 sends nothing more: after DEVICE_OFFLINE_AFTER_S it shows offline, in red,
        # while sim-1, still sending, stays online in green.
        page.wait_for_selector(f'{row}[data-status="offline"]', timeout=(OFFLINE_AFTER_S + 15) * 1000)
        assert page.eval_on_selector(f"{row} .dot", "(e) => getComputedStyle(e).color") == RED
        page.wait_for_selector(f'{busy}[data-status="online"]', timeout=10_000)
        assert page.eval_on_selector(f"{busy} .dot", "(e) => getComputedStyle(e).color") == GREEN
        assert page.inner_text("#card-offline") != "0"
        page.wait_for_selector('#devices tr[data-device-id="sim-3"][data-status="offline"]', timeout=10_000)
        shot(page, "overview.png")


def test_alert_opened_by_a_rule_appears_and_is_resolved_from_the_page(browser, dash_server):
    rule = dash_server.post("/api/alert-rules", json={"rule_name": "tank level high", "device_id": "tank-1",
                                                      "metric": "level", "rule_type": "above",
                                                      "threshold_value": 100, "severity": "critical"})
    assert rule.status_code == 201, rule.text
    page = open_page(browser, dash_server, path="/#/alerts")

    def breach() -> list:
        # Each worker loads the new rule within seconds; a breach posted to one that has not yet
        # is simply not alerted on, so post until an alert is open.
        dash_server.post("/api/telemetry?device_id=tank-1",
                         json={"timestamp": iso(datetime.now(UTC)), "signals": {"level": 150.5}})
        return dash_server.get("/api/alerts?is_resolved=false").json()["data"]

    alert = wait_for(breach, timeout=30, interval=0.5)[0]
    row = f'#alerts-open tr[data-alert-id="{alert["id"]}"]'
    page.wait_for_selector(row, timeout=10_000)
    assert "tank-1" in page.inner_text(row) and "critical" in page.inner_text(row)
    shot(page, "alerts-open.png")
    page.click(f"{row} button.resolve")
    page.wait_for_selector(f'#alerts-resolved tr[data-alert-id="{alert["id"]}"]', timeout=10_000)
    assert page.query_selector(row) is None
    stored = dash_server.get(f"/api/alerts?rule_id={alert['rule_id']}").json()["data"][0]
    assert stored["is_resolved"] is True and stored["resolved_by"] == "dashboard"
    shot(page, "alerts.png")


def test_resolving_with_a_read_key_says_admin_is_needed(browser, dash_server):
    created = dash_server.post("/api/keys", json={"name": "viewer", "scopes": ["read"]})
    assert created.status_code == 201, created.text
    read_key = created.json()["key"]
    dash_server.post("/api/alert-rules", json={"rule_name": "hot", "metric": "temp", "rule_type": "above",
                                               "threshold_value": 50})

    def breach() -> list:
        dash_server.post("/api/telemetry?device_id=oven-1",
                         json={"timestamp": iso(datetime.now(UTC)), "signals": {"temp": 90}})
        return dash_server.get("/api/alerts?is_resolved=false").json()["data"]

    alert = wait_for(breach, timeout=30, interval=0.5)[0]
    page = open_page(browser, dash_server, key=read_key, path="/#/alerts")
    page.click(f'#alerts-open tr[data-alert-id="{alert["id"]}"] button.resolve')
    page.wait_for_function("() => /admin scope/.test(document.getElementById('alerts-error').textContent)",
                           timeout=10_000)
    assert dash_server.get("/api/alerts?is_resolved=false").json()["data"][0]["id"] == alert["id"]


def test_page_works_with_everything_but_the_service_blocked(browser, dash_server):
    post_history(dash_server, devices=2, minutes=2)
    context = new_context(browser)
    # The service: its HTTP port and its stream process's port on the same host.
    service = {urlsplit(dash_server.url).netloc, f"127.0.0.1:{dash_server.env['STREAM_PORT']}"}
    requested: list[str] = []
    blocked: list[str] = []

    def only_the_service(route) -> None:
        if urlsplit(route.request.url).netloc in service:
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    context.route("**/*", only_the_service)
    page = context.new_page()
    page.on("request", lambda req: requested.append(req.url))
    failed: list[str] = []
    # ERR_ABORTED: the page itself closed the request (an EventSource closed on leaving a view)
    page.on("requestfailed", lambda req: req.failure != "net::ERR_ABORTED" and failed.append(req.url))
    page.goto(dash_server.url + "/")
    page.fill("#key-input", dash_server.api_key)
    page.click("#signin-form button")
    page.wait_for_selector('#devices tr[data-device-id="sim-1"]', timeout=15_000)
    page.goto(dash_server.url + "/#/device/sim-2")
    page.wait_for_function("() => document.getElementById('chart-info').dataset.source", timeout=15_000)
    assert page.evaluate("() => typeof window.Plotly === 'object' && !!document.querySelector('#chart .main-svg')")
    assert _live_mode(page) == "stream"  # the stream process is part of the service
    page.click('a[data-nav="health"]')
    page.wait_for_function("() => document.getElementById('h-circuit').textContent === 'closed'", timeout=15_000)
    with producing(dash_server, ["sim-1", "sim-2", "sim-3"], every_s=0.2):  # ingest goes on
        page.wait_for_function("() => Number(document.getElementById('h-written').textContent) > 0"
                               " && parseFloat(document.getElementById('h-rate').textContent) > 0", timeout=20_000)
        shot(page, "health.png")
    is_red = "() => document.getElementById('h-rejected-card').classList.contains('bad')"
    assert not page.evaluate(is_red), "nothing was rejected, yet the Rejected card is red"
    bad = dash_server.post("/api/telemetry", json={"device_id": "sim-1", "signals": {"roll": "level"}})
    assert bad.status_code == 400, bad.text
    page.wait_for_function(is_red, timeout=20_000)
    assert blocked == [], f"requests to other hosts: {blocked}"
    assert requested and all(urlsplit(u).netloc in service for u in requested if not u.startswith("data:"))
    assert failed == []
    # The key went as a header only: in no URL, and kept for this tab alone.
    assert not any(dash_server.api_key in u for u in requested)
    assert page.evaluate("() => sessionStorage.getItem('telemetry.apiKey')") == dash_server.api_key
    assert page.evaluate("() => localStorage.length") == 0
