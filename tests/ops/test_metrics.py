"""/metrics: every worker added up, read by a real Prometheus, clean for promtool, and guarded."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import requests

from tests.live_server import free_port, wait_for
from tests.ops.helpers import ingest_on_both_workers, instance_written

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"


def _sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample of the exposition (sum over the samples that match)."""
    total, found = 0.0, False
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
            found = True
    assert found, f"no sample {name} {labels}"
    return total


def _read_key(server) -> str:
    r = server.post("/api/keys", json={"name": "prometheus", "scopes": ["read"]})
    assert r.status_code == 201, r.text
    return r.json()["key"]


@pytest.mark.timeout(300)
def test_metrics_add_up_both_workers_and_promtool_finds_nothing(make_live_server):
    server = make_live_server(workers=2)
    sent = ingest_on_both_workers(server)
    instance_written(server, sent)
    text = wait_for(lambda: (t := server.get("/metrics").text) and _sample(
        t, "telemetry_readings_committed_total") == sent and t, timeout=30)
    assert _sample(text, "telemetry_readings_accepted_total", format="raw", transport="http") == sent
    assert _sample(text, "telemetry_http_requests_total", route="/telemetry", method="POST", status="200") == sent / 5
    assert _sample(text, "telemetry_http_request_duration_seconds_count", route="/telemetry") == sent / 5
    assert _sample(text, "telemetry_flush_readings_sum") == sent
    assert _sample(text, "telemetry_write_duration_seconds_count") >= 2
    assert _sample(text, "telemetry_workers") == 2
    assert _sample(text, "telemetry_circuit_state") == 0
    for name in ("telemetry_buffer_pending_readings", "telemetry_spool_bytes", "telemetry_stream_subscribers",
                 "telemetry_rate_limited_requests_total", "telemetry_alert_webhook_failures_total"):
        assert name in text
    if not Path(PROMTOOL).exists():
        pytest.skip("promtool is not installed (Debian package prometheus)")
    check = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert check.returncode == 0 and check.stdout.strip() == "" and check.stderr.strip() == "", (
        check.stdout + check.stderr)


def test_metrics_need_a_read_key_or_an_allowed_address(make_live_server):
    server = make_live_server(workers=1)
    assert requests.get(server.url + "/metrics", timeout=10).status_code == 401
    ingest = server.post("/api/keys", json={"name": "gw", "scopes": ["ingest"]}).json()["key"]
    r = requests.get(server.url + "/metrics", headers={"X-API-Key": ingest}, timeout=10)
    assert r.status_code == 403 and "read" in r.json()["error"]
    r = requests.get(server.url + "/metrics", headers={"Authorization": f"Bearer {_read_key(server)}"}, timeout=10)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/plain")
    assert "telemetry_http_requests_total" in r.text


def test_metrics_allow_lists_addresses(make_app):
    app = make_app(metrics_allow=["10.0.0.0/8", "192.0.2.7/32"])
    client = app.test_client()
    assert client.get("/metrics", environ_base={"REMOTE_ADDR": "10.1.2.3"}).status_code == 200
    assert client.get("/metrics", environ_base={"REMOTE_ADDR": "192.0.2.7"}).status_code == 200
    assert client.get("/metrics", environ_base={"REMOTE_ADDR": "192.0.2.8"}).status_code == 401
    assert client.get("/metrics", environ_base={"REMOTE_ADDR": "127.0.0.1"}).status_code == 401


@pytest.mark.timeout(300)
def test_prometheus_scrapes_the_instance_and_counts_what_both_workers_took(make_live_server, tmp_path):
    if not Path(PROMETHEUS).exists():
        pytest.skip("prometheus is not installed (Debian package prometheus; .ci/run installs it)")
    server = make_live_server(workers=2)
    key = _read_key(server)
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(f"""
global: {{scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}}
scrape_configs:
  - job_name: telemetry
    metrics_path: /metrics
    authorization: {{type: Bearer, credentials: "{key}"}}
    static_configs: [{{targets: ["127.0.0.1:{server.port}"]}}]
""")
    log = open(tmp_path / "prometheus.log", "wb")
    prom = subprocess.Popen([PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
    api = f"http://127.0.0.1:{port}/api/v1"

    def query(expr: str) -> list:
        try:
            body = requests.get(api + "/query", params={"query": expr}, timeout=5).json()
        except (requests.RequestException, ValueError):
            return []
        return body.get("data", {}).get("result", []) if body.get("status") == "success" else []

    try:
        def target_up() -> bool:
            try:
                targets = requests.get(api + "/targets", timeout=5).json()["data"]["activeTargets"]
            except (requests.RequestException, ValueError, KeyError):
                return False
            return len(targets) == 1 and targets[0]["health"] == "up"

        wait_for(target_up, timeout=90, interval=0.5)
        sent = ingest_on_both_workers(server)
        instance_written(server, sent)
        expr = 'sum(telemetry_readings_accepted_total{format="raw",transport="http"})'
        result = wait_for(lambda: (r := query(expr)) and float(r[0]["value"][1]) == sent and r,
                          timeout=60, interval=0.5)
        assert float(result[0]["value"][1]) == sent
        assert query('up{job="telemetry"}')[0]["value"][1] == "1"
        assert float(query("telemetry_workers")[0]["value"][1]) == 2
    finally:
        prom.terminate()
        try:
            prom.wait(20)
        except subprocess.TimeoutExpired:
            prom.kill()
        log.close()
