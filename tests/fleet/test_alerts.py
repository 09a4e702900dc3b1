"""Alerts: rules, evaluation on the write path, duration and hysteresis, replayed backlogs,
silence, resolution and webhooks, against the real database and a real HTTP receiver."""

from __future__ import annotations

import http.server
import json
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backend.fleet.alerts import Rule, State, step

ADMIN = {"Authorization": "Bearer test-admin-key"}
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def iso(dt: datetime) -> str:
    return dt.isoformat().replace("+00:00", "Z")


def engine(app):
    return app.extensions["fleet_alerts"]


def add_rule(client, **body):
    r = client.post("/api/alert-rules", json={"rule_name": "r", **body}, headers=ADMIN)
    assert r.status_code == 201, r.get_json()
    return r.get_json()["data"]


def send(app, client, device, metric, value, ts):
    r = client.post("/api/ingest", json={"device_id": device, metric: value, "timestamp": iso(ts)}, headers=ADMIN)
    assert r.status_code == 200, r.get_json()
    assert engine(app).drain(10)


def alerts(client, **params):
    r = client.get("/api/alerts", query_string=params, headers=ADMIN)
    assert r.status_code == 200, r.get_json()
    return r.get_json()["data"]


def wait_for(predicate, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    return predicate()


# ---- the state machine, without a database -------------------------------------------------


def above(threshold=10.0, hysteresis=0.0, duration_s=0, auto_resolve=True):
    return Rule(1, "r", None, "x", "above", None, threshold, hysteresis, duration_s, auto_resolve)


def run(rule, values, spacing_s=1.0):
    st_ = State()
    return [step(rule, st_, T0 + timedelta(seconds=i * spacing_s), v) for i, v in enumerate(values)]


def test_step_opens_once_for_a_sustained_breach():
    assert run(above(), [5, 11, 12, 13, 14]) == [None, "open", None, None, None]


def test_step_minimum_duration():
    # 10 s apart; the breach must last 30 s of measurement time
    assert run(above(duration_s=30), [11, 11, 11, 11, 11], spacing_s=10) == [None, None, None, "open", None]
    # a dip to normal restarts the clock
    assert run(above(duration_s=30), [11, 11, 5, 11, 11, 11, 11], spacing_s=10) == \
        [None, None, None, None, None, None, "open"]


def test_step_hysteresis_stops_flapping():
    hovering = [10.1, 9.9, 10.2, 9.8, 10.1, 9.95]
    assert run(above(hysteresis=0), hovering) == ["open", "resolve", "open", "resolve", "open", "resolve"]
    assert run(above(hysteresis=1), hovering) == ["open", None, None, None, None, None]
    assert run(above(hysteresis=1), [11, 9.5, 8.9, 11]) == ["open", None, "resolve", "open"]


def test_step_ignores_older_readings_and_respects_auto_resolve():
    rule = above(auto_resolve=False)
    st_ = State()
    assert step(rule, st_, T0, 11) == "open"
    assert step(rule, st_, T0 - timedelta(seconds=5), 1) is None  # out of order: ignored
    assert step(rule, st_, T0 + timedelta(seconds=1), 1) is None  # clears, but a person resolves it
    assert st_.state == "normal"


def test_step_outside_and_below():
    outside = Rule(1, "r", None, "x", "outside", 0.0, 10.0, 1.0, 0)
    assert run(outside, [5, -1, 0.5, 1.5, 12, 9.5, 8]) == [None, "open", None, "resolve", "open", None, "resolve"]
    below = Rule(1, "r", None, "x", "below", 3.0, None, 0.5, 0)
    assert run(below, [4, 2.9, 3.2, 3.6]) == [None, "open", None, "resolve"]


@settings(max_examples=200, deadline=None)
@given(values=st.lists(st.floats(-100, 100), max_size=60), hysteresis=st.floats(0, 20),
       duration=st.integers(0, 30))
def test_step_alternates_open_and_resolve(values, hysteresis, duration):
    actions = [a for a in run(above(10, hysteresis, duration), values, spacing_s=3) if a]
    assert actions == ["open", "resolve"] * (len(actions) // 2) + ["open"] * (len(actions) % 2)
    if hysteresis > 0:
        # no resolve unless a value reached threshold - hysteresis
        assert "resolve" not in actions or any(v <= 10 - hysteresis for v in values)


# ---- evaluation on the write path -----------------------------------------------------------


def test_alert_opens_once_for_sustained_breach_not_per_reading(app, client, db):
    add_rule(client, device_id="n1", metric="flow_rate", rule_type="above", threshold_value=10, severity="critical")
    now = datetime.now(UTC)
    for i in range(6):
        send(app, client, "n1", "flow_rate", 12 + i, now - timedelta(seconds=60 - i))
    send(app, client, "n2", "flow_rate", 50, now)  # the rule is for n1 only
    found = alerts(client)
    assert len(found) == 1
    a = found[0]
    assert (a["device_id"], a["alert_type"], a["severity"], a["metric"]) == ("n1", "above", "critical", "flow_rate")
    assert (a["actual_value"], a["threshold_value"], a["is_resolved"]) == (12, 10, False)
    assert a["triggered_at"] == iso((now - timedelta(seconds=60)).replace(microsecond=now.microsecond))
    assert db.execute("SELECT count(*) FROM alerts").fetchone()[0] == 1


def test_minimum_duration_and_auto_resolution(app, client):
    add_rule(client, metric="flow_rate", rule_type="above", threshold_value=10, hysteresis=1, duration_s=60)
    now = datetime.now(UTC).replace(microsecond=0)
    send(app, client, "n1", "flow_rate", 11, now - timedelta(seconds=200))
    send(app, client, "n1", "flow_rate", 11, now - timedelta(seconds=170))
    assert alerts(client) == []  # 30 s of breach: not yet
    send(app, client, "n1", "flow_rate", 12, now - timedelta(seconds=130))  # 70 s
    [a] = alerts(client)
    assert a["actual_value"] == 12 and a["triggered_at"] == iso(now - timedelta(seconds=130))
    send(app, client, "n1", "flow_rate", 9.5, now - timedelta(seconds=100))  # inside the hysteresis band
    assert alerts(client, is_resolved="false")
    send(app, client, "n1", "flow_rate", 8.5, now - timedelta(seconds=90))  # back to normal
    [a] = alerts(client)
    assert a["is_resolved"] is True and a["resolved_by"] == "auto" and a["resolved_value"] == 8.5
    assert alerts(client, is_resolved="false") == []


def test_replayed_backlog_does_not_open_live_alerts(app, client, db):
    add_rule(client, metric="flow_rate", rule_type="above", threshold_value=10)
    old = datetime.now(UTC) - timedelta(hours=3)
    body = [{"device_id": "n1", "flow_rate": 50 + i, "timestamp": iso(old + timedelta(minutes=i))} for i in range(30)]
    r = client.post("/api/ingest", json=body, headers=ADMIN)
    assert r.status_code == 200
    assert engine(app).drain(10)
    assert alerts(client) == []
    assert engine(app).stats["skipped_replay"] >= 30
    assert db.execute("SELECT count(*) FROM alert_state").fetchone()[0] == 0
    assert db.execute("SELECT count(*) FROM telemetry_readings").fetchone()[0] == 30  # stored all the same


def test_two_workers_share_alert_state(make_app, client):
    a, b = make_app(), make_app()  # two apps = two workers' engines over one database
    add_rule(a.test_client(), metric="pressure", rule_type="above", threshold_value=5, duration_s=20)
    b.extensions["fleet_alerts"].reload_rules()
    now = datetime.now(UTC)

    def reading(t, v):
        from backend.ingest.parsing import Reading
        return [Reading("n1", "pressure", now - timedelta(seconds=t), v)]

    engine(a).evaluate(reading(60, 6))
    engine(b).evaluate(reading(50, 7))  # 10 s of breach, seen by the other worker
    assert engine(a).evaluate(reading(45, 7))[0] == []
    opened, _ = engine(b).evaluate(reading(35, 8))  # 25 s: opens, once
    assert len(opened) == 1
    assert engine(a).evaluate(reading(30, 9))[0] == []
    assert len(alerts(client)) == 1


def test_resolve_via_patch(app, client):
    add_rule(client, metric="flow_rate", rule_type="above", threshold_value=10, auto_resolve=False)
    send(app, client, "n1", "flow_rate", 20, datetime.now(UTC))
    [a] = alerts(client, is_resolved="false", device_id="n1")
    assert alerts(client, device_id="n2") == []
    bare = app.test_client()
    read = client.post("/api/keys", json={"name": "dash", "scopes": ["read"]}, headers=ADMIN).get_json()["key"]
    assert bare.patch("/api/alerts", json={"alert_id": a["id"], "is_resolved": True},
                      headers={"X-API-Key": read}).status_code == 403
    r = client.patch("/api/alerts", json={"alert_id": a["id"], "is_resolved": True, "resolved_by": "operator"},
                     headers=ADMIN)
    assert r.status_code == 200, r.get_json()
    d = r.get_json()["data"]
    assert d["is_resolved"] is True and d["resolved_by"] == "operator" and d["resolved_at"]
    assert alerts(client, is_resolved="false") == []
    assert len(alerts(client, is_resolved="true")) == 1
    # still in breach: no new alert until the value returns to normal and breaches again
    send(app, client, "n1", "flow_rate", 21, datetime.now(UTC))
    assert alerts(client, is_resolved="false") == []
    send(app, client, "n1", "flow_rate", 1, datetime.now(UTC))
    send(app, client, "n1", "flow_rate", 22, datetime.now(UTC))
    assert len(alerts(client, is_resolved="false")) == 1
    assert client.patch("/api/alerts", json={"alert_id": 999999, "is_resolved": True},
                        headers=ADMIN).status_code == 404
    assert client.patch("/api/alerts", json={"is_resolved": True}, headers=ADMIN).status_code == 400
    assert client.patch("/api/alerts", json={"alert_id": a["id"], "is_resolved": "yes"},
                        headers=ADMIN).status_code == 400
    # reopening while another alert of the rule and device is open would break "one open alert"
    assert client.patch("/api/alerts", json={"alert_id": a["id"], "is_resolved": False},
                        headers=ADMIN).status_code == 409


def test_rule_crud(app, client):
    bare = app.test_client()
    read = client.post("/api/keys", json={"name": "dash", "scopes": ["read"]}, headers=ADMIN).get_json()["key"]
    body = {"rule_name": "High flow", "rule_type": "high_flow", "threshold_value": 100, "device_id": "n1"}
    assert bare.post("/api/alert-rules", json=body, headers={"X-API-Key": read}).status_code == 403
    rule = add_rule(client, **body)
    assert (rule["rule_type"], rule["metric"], rule["threshold_high"]) == ("above", "flow_rate", 100)
    silent = add_rule(client, rule_type="no_data", duration_minutes=15)
    assert (silent["rule_type"], silent["duration_s"], silent["metric"]) == ("silent", 900, None)
    listed = bare.get("/api/alert-rules", headers={"X-API-Key": read}).get_json()["data"]
    assert [r["id"] for r in listed] == [rule["id"], silent["id"]]
    for bad in ({"rule_type": "above", "metric": "x"}, {"rule_type": "sideways", "metric": "x"},
                {"rule_type": "outside", "metric": "x", "threshold_low": 5, "threshold_high": 1},
                {"rule_type": "outside", "metric": "x", "threshold_low": 0, "threshold_high": 1, "hysteresis": 2},
                {"rule_type": "silent"}, {"rule_type": "above", "metric": "x", "threshold_value": 1,
                                          "webhook_url": "file:///etc/passwd"},
                {"rule_type": "above", "metric": "x", "threshold_value": 1, "severity": "meh"}):
        r = client.post("/api/alert-rules", json={"rule_name": "bad", **bad}, headers=ADMIN)
        assert r.status_code == 400, bad
    send(app, client, "n1", "flow_rate", 150, datetime.now(UTC))
    assert len(alerts(client, is_resolved="false")) == 1
    assert bare.delete(f"/api/alert-rules/{rule['id']}", headers={"X-API-Key": read}).status_code == 403
    assert client.delete(f"/api/alert-rules/{rule['id']}", headers=ADMIN).status_code == 200
    [a] = alerts(client)
    assert a["is_resolved"] is True and a["resolved_by"] == "rule deleted"
    assert client.delete(f"/api/alert-rules/{rule['id']}", headers=ADMIN).status_code == 404
    send(app, client, "n1", "flow_rate", 160, datetime.now(UTC))
    assert len(alerts(client)) == 1


# ---- silence -------------------------------------------------------------------------------


def test_silence_alert_after_threshold(app, client, db):
    add_rule(client, rule_type="silent", duration_s=600, severity="critical")
    send(app, client, "n1", "flow_rate", 1, datetime.now(UTC))
    send(app, client, "n2", "flow_rate", 1, datetime.now(UTC))
    eng = engine(app)
    assert eng.run_silence_check(force=True) == ([], [])
    db.execute("UPDATE devices SET last_seen = now() - interval '30 minutes' WHERE device_id = 'n1'")
    opened, _ = eng.run_silence_check(force=True)
    assert [a["device_id"] for a in opened] == ["n1"]
    assert opened[0]["alert_type"] == "silent" and opened[0]["actual_value"] >= 1800
    assert eng.run_silence_check(force=True) == ([], [])  # one alert per silent episode
    # a person resolves it while the device is still silent: it does not come back every check
    client.patch("/api/alerts", json={"alert_id": opened[0]["id"], "is_resolved": True}, headers=ADMIN)
    assert eng.run_silence_check(force=True) == ([], [])
    # the device comes back, goes silent again: a new episode
    send(app, client, "n1", "flow_rate", 1, datetime.now(UTC))
    db.execute("UPDATE devices SET last_seen = now() - interval '11 minutes' WHERE device_id = 'n1'")
    opened, _ = eng.run_silence_check(force=True)
    assert len(opened) == 1
    send(app, client, "n1", "flow_rate", 1, datetime.now(UTC))
    _, resolved = eng.run_silence_check(force=True)
    assert [(a["id"], a["resolved_by"]) for a in resolved] == [(opened[0]["id"], "auto")]


def test_silence_check_runs_once_across_workers(make_app, client):
    add_rule(client, rule_type="silent", duration_s=600)
    a, b = make_app(alert_silence_check_s=3600), make_app(alert_silence_check_s=3600)
    engine(a).run_silence_check()
    engine(b).run_silence_check()
    engine(a).run_silence_check()
    assert engine(a).stats["silence_runs"] + engine(b).stats["silence_runs"] == 1


def test_silence_job_runs_by_itself(make_app):
    app = make_app(alert_silence_check_s=0.2)
    c = app.test_client()
    c.environ_base["HTTP_AUTHORIZATION"] = "Bearer test-admin-key"
    add_rule(c, rule_type="silent", duration_s=1)
    send(app, c, "n1", "flow_rate", 1, datetime.now(UTC))
    found = wait_for(lambda: alerts(c, is_resolved="false"))
    assert [a["device_id"] for a in found] == ["n1"]
    send(app, c, "n1", "flow_rate", 2, datetime.now(UTC))  # data resumes: resolved automatically
    assert wait_for(lambda: alerts(c, is_resolved="true"))


# ---- webhooks ------------------------------------------------------------------------------


@pytest.fixture
def receiver():
    """A real HTTP server that answers 500 twice, then 200, and keeps what it received."""
    got: list[dict] = []
    statuses = [500, 500]

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers["Content-Length"]))
            got.append({"body": json.loads(body), "content_type": self.headers["Content-Type"]})
            self.send_response(statuses.pop(0) if statuses else 200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", got
    server.shutdown()
    server.server_close()


def test_webhook_retried_with_backoff(make_app, receiver, db):
    app = make_app(alert_webhook_allow_private=True)  # the receiver listens on loopback
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = "Bearer test-admin-key"
    url, got = receiver
    add_rule(client, metric="flow_rate", rule_type="above", threshold_value=10, webhook_url=url)
    send(app, client, "n1", "flow_rate", 42, datetime.now(UTC))
    assert wait_for(lambda: len(got) >= 3)
    assert len(got) == 3  # 500, 500, then delivered
    payload = got[-1]["body"]
    assert payload["event"] == "alert.opened" and payload["alert"]["actual_value"] == 42
    assert payload["rule"]["webhook_url"] == url and got[-1]["content_type"] == "application/json"
    assert wait_for(lambda: db.execute("SELECT notified_at FROM alerts").fetchone()[0] is not None)
    assert engine(app).webhooks.stats["retries"] == 2
    send(app, client, "n1", "flow_rate", 1, datetime.now(UTC))
    assert wait_for(lambda: len(got) == 4)
    assert got[-1]["body"]["event"] == "alert.resolved"


@pytest.mark.parametrize("url,kind", [
    ("http://127.0.0.1:9/hook", "loopback"),
    ("http://localhost:9/hook", "loopback"),
    ("http://[::1]/hook", "loopback"),
    ("http://[::ffff:127.0.0.1]/hook", "loopback"),
    ("http://169.254.169.254/latest/meta-data/", "link-local"),
    ("http://10.1.2.3/hook", "private"),
    ("https://192.168.0.10/hook", "private"),
    ("http://172.16.5.5/hook", "private"),
    ("http://0.0.0.0/hook", "unspecified"),
    ("http://224.0.0.1/hook", "multicast"),
    ("http://100.64.0.1/hook", "non-public"),
])
def test_webhook_to_a_non_public_address_is_refused(client, url, kind):
    r = client.post("/api/alert-rules", json={"rule_name": "r", "rule_type": "above", "metric": "x",
                                              "threshold_value": 1, "webhook_url": url}, headers=ADMIN)
    assert r.status_code == 400, r.get_json()
    error = r.get_json()["error"]
    assert error.startswith("webhook_url: ") and f"a {kind}" in error and "ALERT_WEBHOOK_ALLOW_PRIVATE" in error
    assert client.get("/api/alert-rules", headers=ADMIN).get_json()["data"] == []


def test_webhook_to_a_public_address_is_accepted_and_private_ones_when_allowed(client, make_app):
    # A literal public address: accepted without any lookup (nothing is sent at creation).
    rule = add_rule(client, metric="x", rule_type="above", threshold_value=1, webhook_url="http://93.184.216.34/h")
    assert rule["webhook_url"] == "http://93.184.216.34/h"
    allowed = make_app(alert_webhook_allow_private=True).test_client()
    r = allowed.post("/api/alert-rules", json={"rule_name": "r", "rule_type": "above", "metric": "x",
                                               "threshold_value": 1, "webhook_url": "http://10.0.0.1/h"},
                     headers=ADMIN)
    assert r.status_code == 201, r.get_json()


def test_stored_webhook_to_a_private_address_is_not_called(app, client, receiver, db):
    """A rule stored before the check (or whose name now resolves elsewhere) still gets no POST."""
    url, got = receiver
    rule = add_rule(client, metric="flow_rate", rule_type="above", threshold_value=10)
    db.execute("UPDATE alert_rules SET webhook_url = %s WHERE id = %s", (url, rule["id"]))
    engine(app).reload_rules()
    send(app, client, "n1", "flow_rate", 42, datetime.now(UTC))
    assert len(alerts(client, is_resolved="false")) == 1  # the alert itself opens
    assert wait_for(lambda: engine(app).webhooks.stats["failed"] == 1)
    assert got == [] and engine(app).webhooks.stats["sent"] == 0
    assert db.execute("SELECT notified_at FROM alerts").fetchone()[0] is None


def test_fleet_close_stops_its_threads(make_app):
    app = make_app()
    fleet = app.extensions["fleet"]
    threads = [fleet.keys._thread, fleet.alerts._thread, fleet.alerts.silence._thread]
    assert all(t is not None and t.is_alive() for t in threads)
    fleet.close(timeout=5)
    assert not any(t.is_alive() for t in threads)
