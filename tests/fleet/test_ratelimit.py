"""Rate limits per key and per IP: 429 with Retry-After, one key never slows another, and the
counters shared through the real Redis across gunicorn workers."""

from __future__ import annotations

import socket
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

ADMIN = {"Authorization": "Bearer test-admin-key"}


def redis_url_or_skip() -> str:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            if not s.recv(16).startswith(b"+PONG"):
                raise OSError("not a Redis")
    except OSError as exc:
        pytest.skip(f"no Redis answering on 127.0.0.1:6379 ({exc})")
    return "redis://127.0.0.1:6379/0"


def new_key(client, scopes=("read",)):
    r = client.post("/api/keys", json={"name": "gw", "scopes": list(scopes)}, headers=ADMIN)
    assert r.status_code == 201
    return r.get_json()["key"]


def test_noisy_key_gets_429_with_retry_after_others_unaffected(make_app):
    app = make_app(rate_limit_default="5/minute", rate_limit_ip="1000/minute")
    c = app.test_client()
    noisy, quiet = new_key(c), new_key(c)
    codes = [c.get("/api/devices", headers={"X-API-Key": noisy}).status_code for _ in range(8)]
    assert codes == [200] * 5 + [429] * 3
    r = c.get("/telemetry/query", headers={"X-API-Key": noisy})  # one budget across endpoints
    assert r.status_code == 429
    assert r.is_json and r.get_json()["status"] == 429 and "rate limit" in r.get_json()["error"]
    assert 1 <= int(r.headers["Retry-After"]) <= 60
    # the other key, from the same address, still has its whole budget
    assert [c.get("/api/devices", headers={"X-API-Key": quiet}).status_code for _ in range(5)] == [200] * 5
    # the operator's ADMIN_API_KEY is not limited
    assert all(c.get("/api/devices", headers=ADMIN).status_code == 200 for _ in range(10))


def test_ingest_is_limited_per_key(make_app, db):
    app = make_app(rate_limit_default="3/minute", rate_limit_ip="1000/minute")
    c = app.test_client()
    key = new_key(c, ["ingest"])
    codes = [c.post("/api/ingest", json={"device_id": "n1", "flow_rate": i, "timestamp": 1_700_000_000 + i},
                    headers={"x-api-key": key}).status_code for i in range(5)]
    assert codes == [200, 200, 200, 429, 429]
    assert db.execute("SELECT count(*) FROM telemetry_readings").fetchone()[0] == 3


def test_per_ip_limit_counts_requests_without_a_valid_key(make_app):
    app = make_app(rate_limit_default="1000/minute", rate_limit_ip="4/minute")
    c = app.test_client()
    codes = [c.get("/api/devices", headers={"X-API-Key": f"tk_guess{i}"}).status_code for i in range(6)]
    assert codes == [401] * 4 + [429] * 2
    other = app.test_client()
    r = other.get("/api/devices", environ_base={"REMOTE_ADDR": "10.1.2.3"}, headers={"X-API-Key": "tk_guess"})
    assert r.status_code == 401  # another address has its own budget
    assert c.get("/api/devices", headers=ADMIN).status_code == 200


def test_limits_can_be_disabled(make_app):
    app = make_app(rate_limit_default="", rate_limit_ip="")
    c = app.test_client()
    key = new_key(c)
    assert all(c.get("/api/devices", headers={"X-API-Key": key}).status_code == 200 for _ in range(20))


def test_unreachable_redis_falls_back_to_memory(make_app):
    app = make_app(rate_limit_default="3/minute", rate_limit_ip="1000/minute", redis_url="redis://127.0.0.1:1/0")
    c = app.test_client()
    key = new_key(c)
    codes = [c.get("/api/devices", headers={"X-API-Key": key}).status_code for _ in range(5)]
    assert codes == [200, 200, 200, 429, 429]


def test_counters_are_shared_through_redis_across_workers(make_live_server):
    redis_url = redis_url_or_skip()
    server = make_live_server(workers=2, env={"REDIS_URL": redis_url, "RATE_LIMIT_DEFAULT": "10/hour",
                                              "RATE_LIMIT_IP": "100000/hour"})
    r = server.post("/api/keys", json={"name": "gw", "scopes": ["read"]})
    key = r.json()["key"]  # a new key id: its own Redis bucket, whatever ran before
    other = server.post("/api/keys", json={"name": "gw2", "scopes": ["read"]}).json()["key"]
    # A new connection per request, 8 at a time: sequential connections may all land on
    # one worker (whichever is in accept() first), concurrent ones reach both. Keep going
    # until each worker has answered more than the budget, so per-worker counters would
    # have allowed more than 10 in all and the assertion below can fail.
    codes: list[int] = []
    served: Counter[str] = Counter()

    def one(_: int) -> tuple[int, str, str | None]:
        resp = requests.get(server.url + "/api/devices", headers={"X-API-Key": key}, timeout=10)
        return resp.status_code, resp.headers["X-Served-By"], resp.headers.get("Retry-After")

    with ThreadPoolExecutor(8) as pool:
        for _ in range(50):
            for code, worker, retry_after in pool.map(one, range(16)):
                codes.append(code)
                served[worker] += 1
                if code == 429:
                    assert int(retry_after) >= 1
            if len(served) == 2 and min(served.values()) > 10:
                break
    assert len(served) == 2 and min(served.values()) > 10, f"both workers should have answered: {served}"
    # one budget for the key across both workers: exactly 10 allowed, not 10 per worker
    assert codes.count(200) == 10 and codes.count(429) == len(codes) - 10
    assert requests.get(server.url + "/api/devices", headers={"X-API-Key": other}, timeout=10).status_code == 200


def test_health_is_never_rate_limited(make_app):
    # A load balancer probes /health far more often than any budget allows; a 429 there
    # would mark the service down, and its probes must not spend its clients' budget either.
    app = make_app(rate_limit_default="2/minute", rate_limit_ip="3/minute")
    c = app.test_client()
    key = new_key(c)
    assert all(c.get("/health").status_code == 200 for _ in range(10))
    assert all(c.get("/health", headers={"X-API-Key": key}).status_code == 200 for _ in range(5))
    # the probes spent nothing: the address still has its 3 requests, the key its 2
    assert [c.get("/api/devices", headers={"X-API-Key": f"tk_guess{i}"}).status_code
            for i in range(4)] == [401, 401, 401, 429]
    assert [c.get("/api/devices", headers={"X-API-Key": key}).status_code for _ in range(3)] == [200, 200, 429]
    # and once the address is over its budget, /health still answers
    assert c.get("/health").status_code == 200


def test_limits_return_a_decision_not_an_http_answer():
    # No app, no request: the limiter only decides; the auth hook builds the 429.
    from backend.fleet.ratelimit import EXEMPT_ENDPOINTS, RateLimits

    limits = RateLimits("2/minute", "1/minute")
    assert [limits.check_key("k1").allowed for _ in range(3)] == [True, True, False]
    refused = limits.check_key("k1")
    assert (refused.allowed, refused.budget, refused.limit) == (False, "key", "2 per 1 minute")
    assert 1 <= refused.retry_after <= 60
    assert limits.check_key("k2").allowed  # another key, its own budget
    assert limits.check_ip("10.0.0.1").allowed and not limits.check_ip("10.0.0.1").allowed
    assert limits.check_ip("10.0.0.1").budget == "ip"
    exempt = next(iter(EXEMPT_ENDPOINTS))
    assert all(limits.check_ip("10.0.0.1", exempt).allowed for _ in range(5))


def test_429_names_the_budget_it_came_from(make_app):
    app = make_app(rate_limit_default="1/minute", rate_limit_ip="1000/minute")
    c = app.test_client()
    key = new_key(c)
    assert c.get("/api/devices", headers={"X-API-Key": key}).status_code == 200
    r = c.get("/api/devices", headers={"X-API-Key": key})
    assert r.status_code == 429 and r.get_json()["reason"] == "rate_limited_key"
    assert "1 per 1 minute" in r.get_json()["error"] and r.headers["Retry-After"]
