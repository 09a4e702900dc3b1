"""API keys and scopes, against the real database (and a real gunicorn for revocation)."""

from __future__ import annotations

import hashlib
import logging
import subprocess
import time

import psycopg
import pytest

from tests.pg_control import pg_tool

ADMIN = {"Authorization": "Bearer test-admin-key"}


def new_key(client, scopes, devices=None, name="gw", expires_days=None):
    body = {"name": name, "scopes": scopes}
    if devices is not None:
        body["devices"] = devices
    if expires_days is not None:
        body["expires_days"] = expires_days
    r = client.post("/api/keys", json=body, headers=ADMIN)
    assert r.status_code == 201, r.get_json()
    return r.get_json()["key"], r.get_json()["data"]["id"]


def bearer(key):
    return {"Authorization": f"Bearer {key}"}


def post_line(client, line, headers, device="n1"):
    return client.post("/telemetry/parse", data=line,
                       headers={"Content-Type": "text/plain", "X-Device-Id": device, **headers})


def count(db, table):
    return db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


# ---- 401 and 403 ---------------------------------------------------------------------------


def test_health_is_public_and_reveals_no_secret(app):
    r = app.test_client().get("/health")
    assert r.status_code in (200, 503)
    assert "test-admin-key" not in r.get_data(as_text=True)


@pytest.mark.parametrize("method,path", [
    ("GET", "/telemetry/query"), ("POST", "/telemetry/parse"), ("POST", "/telemetry"),
    ("POST", "/telemetry/batch/flush"), ("GET", "/telemetry/batch/status"), ("GET", "/config"),
    ("GET", "/api/devices"), ("GET", "/api/alerts"), ("PATCH", "/api/alerts"), ("GET", "/api/keys"),
    ("POST", "/api/ingest"), ("GET", "/api/flow-data"), ("GET", "/api/dashboard/summary"),
    ("POST", "/api/alert-rules"), ("PATCH", "/api/devices/n1"),
])
def test_every_endpoint_but_health_needs_a_key(app, method, path):
    r = app.test_client().open(path, method=method, data="x:1", headers={"Content-Type": "text/plain"})
    assert r.status_code == 401, (path, r.get_json())
    assert r.get_json()["error"] == "missing, unknown, expired or revoked API key"
    assert r.headers["WWW-Authenticate"].startswith("Bearer")


def test_unknown_expired_and_revoked_keys_get_the_same_401(app, client, db):
    store = app.extensions["fleet_keys"]
    live, live_id = new_key(client, ["read"])
    expired, expired_id = new_key(client, ["read"], expires_days=1)
    revoked, revoked_id = new_key(client, ["read"])
    for key in (live, expired, revoked):
        assert client.get("/api/devices", headers=bearer(key)).status_code == 200
    db.execute("UPDATE api_keys SET expires_at = now() - interval '1 second', updated_at = clock_timestamp()"
               " WHERE id = %s", (expired_id,))
    assert client.delete(f"/api/keys/{revoked_id}", headers=ADMIN).status_code == 200
    store.sync()  # what the worker's background thread does every second
    messages = set()
    for key in (expired, revoked, "tk_" + "A" * 43, "not-a-key"):
        r = client.get("/api/devices", headers=bearer(key))
        assert r.status_code == 401
        messages.add(r.get_json()["error"])
    assert len(messages) == 1
    assert client.get("/api/devices", headers=bearer(live)).status_code == 200
    listed = {k["id"]: k["status"] for k in client.get("/api/keys", headers=ADMIN).get_json()["data"]}
    assert listed == {live_id: "active", expired_id: "expired", revoked_id: "revoked"}


def test_scopes(app, client, db):
    ingest, _ = new_key(client, ["ingest"])
    read, _ = new_key(client, ["read"])
    admin, _ = new_key(client, ["admin"])
    assert post_line(client, "roll:1", bearer(ingest)).status_code == 200
    assert client.get("/telemetry/query", headers=bearer(ingest)).status_code == 403
    assert client.post("/telemetry/batch/flush", headers=bearer(ingest)).status_code == 403
    assert client.get("/telemetry/query", headers=bearer(read)).status_code == 200
    r = post_line(client, "roll:2", bearer(read))
    assert r.status_code == 403 and "'ingest' scope" in r.get_json()["error"]
    assert client.post("/telemetry/batch/flush", headers=bearer(read)).status_code == 403
    assert client.post("/api/keys", json={"name": "x", "scopes": ["read"]}, headers=bearer(read)).status_code == 403
    # admin implies every scope
    assert post_line(client, "roll:3", bearer(admin), device="n2").status_code == 200
    assert client.get("/telemetry/query", headers=bearer(admin)).status_code == 200
    assert client.post("/telemetry/batch/flush", headers=bearer(admin)).status_code == 200
    # X-API-Key works as well as Authorization: Bearer
    bare = app.test_client()  # `client` sends the admin key in Authorization, which wins over X-API-Key
    assert post_line(bare, "roll:4", {"X-API-Key": ingest}, device="n3").status_code == 200
    assert bare.get("/telemetry/query", headers={"X-API-Key": ingest}).status_code == 403
    assert count(db, "telemetry_readings") == 3


def test_env_admin_key_via_x_api_key(app):
    c = app.test_client()
    assert c.get("/api/keys", headers={"X-API-Key": "test-admin-key"}).status_code == 200
    assert c.get("/api/keys", headers={"X-API-Key": "test-admin-kez"}).status_code == 401


def test_device_bound_key_may_not_write_another_device(app, client, db):
    key, _ = new_key(client, ["ingest"], devices=["n1", "n2"])
    fields_before = count(db, "telemetry_fields")
    r = post_line(client, "brand_new_metric:1", bearer(key), device="n3")
    assert r.status_code == 403, r.get_json()
    assert "n3" in r.get_json()["error"]
    # a mixed request is refused whole
    body = '[{"device_id": "n1", "roll": 1}, {"device_id": "n9", "roll": 2}]'
    r = client.post("/telemetry/parse", data=body, headers={"Content-Type": "application/json", **bearer(key)})
    assert r.status_code == 403
    for table in ("telemetry_readings", "telemetry_raw", "telemetry_quarantine", "devices"):
        assert count(db, table) == 0, table
    assert count(db, "telemetry_fields") == fields_before  # the refused metric name was not registered
    assert post_line(client, "roll:1", bearer(key), device="n1").status_code == 200
    bare = app.test_client()
    r = bare.post("/api/ingest", json=[{"device_id": "n2", "flow_rate": 1.5}], headers={"x-api-key": key})
    assert r.status_code == 200, r.get_json()
    r = bare.post("/api/ingest", json={"device_id": "n4", "flow_rate": 1.5}, headers={"x-api-key": key})
    assert r.status_code == 403
    assert count(db, "telemetry_readings") == 2


# ---- storage of keys ----------------------------------------------------------------------


def test_keys_are_stored_only_as_hashes(client, db, database_url, caplog):
    caplog.set_level(logging.DEBUG)
    keys = [new_key(client, ["ingest"], devices=["n1"])[0], new_key(client, ["read", "admin"])[0]]
    for key in keys:
        assert len(key) >= 3 + 43  # tk_ + 32 random bytes, base64url
        assert post_line(client, "roll:1", bearer(key), device="n1").status_code == 200
        row = db.execute("SELECT key_hash FROM api_keys WHERE key_hash = %s",
                         (hashlib.sha256(key.encode()).hexdigest(),)).fetchone()
        assert row is not None
    listing = client.get("/api/keys", headers=ADMIN).get_data(as_text=True)
    dump = subprocess.run([pg_tool("pg_dump", database_url), "--no-owner", database_url], capture_output=True, text=True, check=True).stdout
    assert "api_keys" in dump and hashlib.sha256(keys[0].encode()).hexdigest() in dump
    for key in keys:
        assert key not in dump
        assert key[:20] not in dump
        assert key not in listing
        assert key not in caplog.text
    assert "test-admin-key" not in dump


def test_last_used_is_recorded_cheaply(app, client, db):
    key, key_id = new_key(client, ["read"])
    for _ in range(5):
        assert client.get("/api/devices", headers=bearer(key)).status_code == 200
    app.extensions["fleet_keys"].sync()
    first = db.execute("SELECT last_used_at FROM api_keys WHERE id = %s", (key_id,)).fetchone()[0]
    assert first is not None
    for _ in range(5):
        client.get("/api/devices", headers=bearer(key))
    app.extensions["fleet_keys"].sync()
    # at most once a minute per key and worker: the later requests did not write again
    assert db.execute("SELECT last_used_at FROM api_keys WHERE id = %s", (key_id,)).fetchone()[0] == first


def test_key_requests_are_validated(client):
    for body in ({"name": "x", "scopes": ["root"]}, {"name": "", "scopes": ["read"]},
                 {"name": "x", "scopes": ["ingest"], "devices": ["bad device"]},
                 {"name": "x", "scopes": ["read"], "expires_days": -1}):
        assert client.post("/api/keys", json=body, headers=ADMIN).status_code == 400, body
    assert client.delete("/api/keys/k_nope", headers=ADMIN).status_code == 404


def test_auth_can_be_switched_off(make_app):
    app = make_app(auth_required=False)
    c = app.test_client()
    assert c.get("/api/devices").status_code == 200
    assert c.post("/telemetry/parse", data="roll:1", headers={"Content-Type": "text/plain",
                                                              "X-Device-Id": "n1"}).status_code == 200


def test_cors_closed_by_default_and_open_to_configured_origins(app, make_app):
    r = app.test_client().get("/health", headers={"Origin": "https://dash.example"})
    assert "Access-Control-Allow-Origin" not in r.headers
    c = make_app(cors_origins=["https://dash.example"]).test_client()
    r = c.options("/api/devices", headers={"Origin": "https://dash.example", "Access-Control-Request-Method": "GET",
                                           "Access-Control-Request-Headers": "Authorization"})
    assert r.status_code == 200
    assert r.headers["Access-Control-Allow-Origin"] == "https://dash.example"
    r = c.get("/api/devices", headers={"Origin": "https://evil.example", **ADMIN})
    assert "Access-Control-Allow-Origin" not in r.headers


def test_database_outage_known_keys_keep_ingesting_unknown_get_503(stoppable_pg, app_config):
    from backend import create_app

    app = create_app(app_config.replace(database_url=stoppable_pg.url, ack_timeout=2.0, max_retries=1))
    c = app.test_client()
    try:
        r = c.post("/api/keys", json={"name": "gw", "scopes": ["ingest"]}, headers=ADMIN)
        key = r.get_json()["key"]
        assert post_line(c, "roll:1", bearer(key)).status_code == 200  # now cached by this worker
        stoppable_pg.stop()
        r = post_line(c, "roll:2", bearer(key))
        assert r.status_code == 200 and r.get_json()["durability"] == "spooled", r.get_json()
        assert post_line(c, "roll:3", ADMIN).status_code == 200
        r = post_line(c, "roll:4", bearer("tk_" + "B" * 43))
        assert r.status_code == 503 and r.headers["Retry-After"]  # not 401: the key may be fine
    finally:
        stoppable_pg.start()
        app.extensions["telemetry"].close(5)


# ---- CLI ----------------------------------------------------------------------------------


def test_cli_create_list_revoke(db, database_url, monkeypatch, capsys):
    from backend.cli import main

    monkeypatch.setenv("DATABASE_URL", database_url)
    assert main(["keys", "create", "--name", "gw1", "--scopes", "ingest", "--devices", "n1,n2",
                 "--expires-days", "30"]) == 0
    out = capsys.readouterr().out
    key = next(line.split()[1] for line in out.splitlines() if line.startswith("key:"))
    key_id = next(line.split()[1] for line in out.splitlines() if line.startswith("id:"))
    row = db.execute("SELECT name, scopes, devices, expires_at IS NOT NULL, key_hash FROM api_keys").fetchone()
    assert row == ("gw1", ["ingest"], ["n1", "n2"], True, hashlib.sha256(key.encode()).hexdigest())
    assert main(["keys", "list"]) == 0
    out = capsys.readouterr().out
    assert key_id in out and key not in out and "active" in out
    assert main(["keys", "revoke", key_id]) == 0
    assert db.execute("SELECT revoked_at IS NOT NULL FROM api_keys").fetchone()[0] is True
    assert main(["keys", "revoke", "k_missing"]) == 1
    assert main(["keys", "create", "--name", "x", "--scopes", "root"]) == 2


# ---- revocation reaches every worker -----------------------------------------------------


def test_revoked_key_is_refused_by_every_worker_within_seconds(make_live_server):
    import requests

    server = make_live_server(workers=2)
    r = server.post("/api/keys", json={"name": "gw", "scopes": ["read"]})
    assert r.status_code == 201, r.text
    key, key_id = r.json()["key"], r.json()["data"]["id"]

    def hit_until_both_workers(expect: int) -> set[str]:
        seen: set[str] = set()
        for _ in range(300):  # a new connection each time; the kernel spreads them over workers
            resp = requests.get(server.url + "/api/devices", headers=bearer(key), timeout=10)
            assert resp.status_code == expect, (expect, resp.status_code, resp.text)
            seen.add(resp.headers["X-Served-By"])
            if len(seen) == 2 and _ >= 20:
                break
        return seen

    assert len(hit_until_both_workers(200)) == 2  # both workers have the key cached as valid
    assert server.post(f"/api/keys/{key_id}", json=None).status_code == 405
    r = requests.delete(server.url + f"/api/keys/{key_id}", headers=server.headers(), timeout=10)
    assert r.status_code == 200
    time.sleep(3)  # workers pull changed keys every second
    assert len(hit_until_both_workers(401)) == 2


def test_database_dump_of_a_live_server_holds_no_key(make_live_server):
    server = make_live_server(workers=1)
    r = server.post("/api/keys", json={"name": "gw", "scopes": ["ingest"], "devices": ["n1"]})
    key = r.json()["key"]
    import requests

    resp = requests.post(server.url + "/api/ingest", json={"device_id": "n1", "flow_rate": 2.5},
                         headers={"x-api-key": key}, timeout=10)
    assert resp.status_code == 200, resp.text
    dump = subprocess.run([pg_tool("pg_dump", server.database_url), server.database_url], capture_output=True, text=True, check=True).stdout
    assert key not in dump and server.api_key not in dump
    assert key not in server.log_tail(1000)
    with psycopg.connect(server.database_url) as conn:
        assert conn.execute("SELECT count(*) FROM telemetry_readings").fetchone()[0] == 1
