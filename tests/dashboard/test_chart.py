"""The chart's history: downsampled to about its pixel width, spikes kept; the page's pure
functions (gaps, µs times, Prometheus sums) run in the browser that uses them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.dashboard.conftest import iso, make_dash_server, open_page


@pytest.fixture
def quiet_server(make_live_server):
    return make_dash_server(make_live_server, stream=False)


def test_long_ranges_come_downsampled_by_lttb_and_keep_the_spike(browser, quiet_server):
    now = datetime.now(UTC)
    spike_at = now - timedelta(minutes=70, seconds=5)  # between two readings
    # 2 h, one reading per 10 s, and (for the 24 h view) a day of a reading a minute before it.
    msgs = [{"device_id": "pump-7", "timestamp": iso(now - timedelta(seconds=10 * i)),
             "signals": {"flow": float(i % 17)}} for i in range(1, 721)]
    msgs += [{"device_id": "pump-7", "timestamp": iso(now - timedelta(hours=2, minutes=i)),
              "signals": {"flow": float(i % 13)}} for i in range(1, 1320)]
    msgs.append({"device_id": "pump-7", "timestamp": iso(spike_at), "signals": {"flow": 999.0}})
    for i in range(0, len(msgs), 1000):
        r = quiet_server.post("/api/telemetry", json=msgs[i:i + 1000])
        assert r.status_code == 200, r.text[:500]
    page = open_page(browser, quiet_server, path="/#/device/pump-7")
    page.wait_for_function("() => /^LTTB downsample=/.test(document.getElementById('chart-info').dataset.source)",
                           timeout=15_000)
    page.click('#ranges button[data-range="24h"]')
    page.wait_for_function("() => (document.getElementById('chart').data || [{}])[0].y?.length > 600",
                           timeout=15_000)
    source = page.eval_on_selector("#chart-info", "(e) => e.dataset.source")
    asked = int(source.rsplit("=", 1)[1])
    width = page.eval_on_selector("#chart", "(e) => e.clientWidth")
    ys = [y for y in page.evaluate("() => document.getElementById('chart').data[0].y") if y is not None]
    # About the chart's pixel width (2,040 readings in the range, far more than pixels) ...
    assert abs(asked - width) <= 0.1 * width + 100 and len(ys) <= asked, (source, width, len(ys))
    assert 999.0 in ys  # ... and LTTB keeps the shape: the spike survives
    assert 0.0 in ys  # and the lows
    # A custom range around the spike: fewer readings than pixels, so every one of them.
    page.click('#ranges button[data-range="custom"]')
    page.fill("#custom-start", (spike_at - timedelta(minutes=10)).strftime("%Y-%m-%dT%H:%M:%S"))
    page.fill("#custom-end", (spike_at + timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%S"))
    page.click("#custom-range button")
    page.wait_for_function("() => { const y = document.getElementById('chart').data[0].y;"
                           " return y.length < 120 && y.includes(999); }", timeout=15_000)
    ys = page.evaluate("() => document.getElementById('chart').data[0].y")
    assert 999.0 in ys and 85 <= len(ys) <= 95  # 90 readings at 10 s plus the spike


def test_page_functions(browser, quiet_server):
    page = open_page(browser, quiet_server)
    got = page.evaluate("""async () => {
        const c = await import('/dashboard/static/chart.js');
        const a = await import('/dashboard/static/api.js');
        const v = await import('/dashboard/static/views.js');
        const g = c.withGaps([0, 1000, 2000, 10000, 11000], [1, 2, 3, 4, 5], 3000);
        const base = Date.parse('2026-01-01T00:00:00Z') * 1000;
        const prom = '# HELP x\\n# TYPE telemetry_readings_rejected_total counter\\n'
          + 'telemetry_readings_rejected_total{format="raw",transport="http"} 3.0\\n'
          + 'telemetry_readings_rejected_total{format="json",transport="mqtt"} 4\\n'
          + 'telemetry_readings_rejected_created{format="raw"} 1.7e9\\n';
        return {
          y: g.y, x3: g.x[3], x0: g.x[0],
          us: [a.tsMicros('2026-01-01T00:00:00.000001Z') - base, a.tsMicros('2026-01-01T00:00:00.5Z') - base,
               a.tsMicros('2026-01-01T01:00:00+01:00') - base, a.tsMicros('2026-01-01T00:00:00Z') - base],
          sum: v.sumMetric(prom, 'telemetry_readings_rejected_total'),
          missing: v.sumMetric(prom, 'telemetry_readings_accepted_total'),
          ago: [a.ago(5), a.ago(125), a.ago(7200), a.ago(null)],
        };
    }""")
    assert got["y"] == [1, 2, 3, None, 4, 5]  # a null where neighbours are > 3 s apart
    assert got["x0"] == "1970-01-01T00:00:00.000" and got["x3"] == "1970-01-01T00:00:06.000"
    assert got["us"] == [1, 500_000, 0, 0]  # µs kept, offsets honoured
    assert got["sum"] == 7 and got["missing"] is None
    assert got["ago"] == ["5 s ago", "2 min ago", "2.0 h ago", "never"]
