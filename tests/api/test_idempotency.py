"""Idempotency-Key on every HTTP ingest route, and the store itself, against the real database."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
import requests

from backend.ingest.idempotency import Claimed, IdempotencyStore, InFlight, Mismatch, Replay, StoredAnswer
from backend.store.pool import make_pool
from tests.live_server import wait_for

# Bodies without a device time: only the key keeps a re-send from being stored twice.
ROUTES = [
    ("/telemetry/parse", {"data": "device_id:idem,v:1", "content_type": "text/plain"}),
    ("/telemetry", {"data": "device_id:idem,v:1", "content_type": "text/plain"}),
    ("/api/ingest", {"json": {"device_id": "idem", "flow_rate": 1.5}}),
    ("/api/telemetry?device_id=idem", {"json": {"signals": {"sine": 0.5}}}),
    ("/write?db=x", {"data": "m,host=idem v=1"}),
    ("/api/v2/write?bucket=b", {"data": "m,host=idem v=1"}),
]


def count(db, device: str = "idem") -> int:
    return db.execute("SELECT count(*) FROM telemetry_readings WHERE device_id = %s", (device,)).fetchone()[0]


@pytest.mark.parametrize("path,kw", ROUTES, ids=[r[0] for r in ROUTES])
def test_a_resend_gets_the_first_answer_and_stores_nothing(client, db, path: str, kw: dict) -> None:
    first = client.post(path, headers={"Idempotency-Key": "gw7-000123"}, **kw)
    assert first.status_code in (200, 204), first.data
    stored = count(db)
    assert stored >= 1
    again = client.post(path, headers={"Idempotency-Key": "gw7-000123"}, **kw)
    assert again.status_code == first.status_code and again.data == first.data
    assert again.headers["Idempotent-Replayed"] == "true" and "Idempotent-Replayed" not in first.headers
    assert count(db) == stored
    # without the key, the same server-timed body is a new observation
    assert client.post(path, **kw).status_code == first.status_code
    assert count(db) == 2 * stored


def test_key_is_scoped_to_the_api_key_and_bound_to_the_request(client, db) -> None:
    other = client.post("/api/keys", json={"name": "gw2", "scopes": ["ingest"]}).json["key"]
    body = {"data": "device_id:idem,v:1", "content_type": "text/plain"}
    assert client.post("/telemetry/parse", headers={"Idempotency-Key": "k"}, **body).status_code == 200
    r = client.post("/telemetry/parse", headers={"Idempotency-Key": "k", "Authorization": f"Bearer {other}"}, **body)
    assert r.status_code == 200 and "Idempotent-Replayed" not in r.headers  # another tenant's key
    assert count(db) == 2
    r = client.post("/telemetry/parse", headers={"Idempotency-Key": "k"}, data="device_id:idem,v:2",
                    content_type="text/plain")
    assert r.status_code == 422 and r.json["reason"] == "idempotency_key_reused"
    assert count(db) == 2


def test_a_refused_request_is_replayed_too_but_a_5xx_is_not_kept(client, db) -> None:
    bad = client.post("/telemetry/parse", headers={"Idempotency-Key": "bad"}, data="v:1", content_type="text/plain")
    assert bad.status_code == 400  # no device: final, so remembered
    again = client.post("/telemetry/parse", headers={"Idempotency-Key": "bad"}, data="v:1", content_type="text/plain")
    assert again.status_code == 400 and again.headers.get("Idempotent-Replayed") == "true"
    assert client.post("/telemetry/parse", headers={"Idempotency-Key": "x" * 256}, data="v:1").status_code == 400
    r = client.post("/telemetry/parse", headers={"Idempotency-Key": "caf\u00e9"}, data="v:1")
    assert r.status_code == 400 and "Idempotency-Key" in r.json["error"]


def test_database_down_means_503_not_a_silent_duplicate(make_app, db_proxy) -> None:
    app = make_app(database_url=db_proxy.url)
    c = app.test_client()
    c.environ_base["HTTP_AUTHORIZATION"] = "Bearer test-admin-key"
    assert c.post("/telemetry/parse", headers={"Idempotency-Key": "up"}, data="device_id:idem,v:1",
                  content_type="text/plain").status_code == 200
    db_proxy.down()
    r = wait_for(lambda: (r := c.post("/telemetry/parse", headers={"Idempotency-Key": "down"},
                                      data="device_id:idem,v:1", content_type="text/plain")).status_code == 503 and r,
                 timeout=30, interval=0.2)
    assert r.json["reason"] == "idempotency_unavailable" and r.headers["Retry-After"]
    db_proxy.up()


# ---- the store, as another transport would use it -----------------------------------------


@pytest.fixture
def store(database_url, db):
    pool = make_pool(database_url, 1, 4)
    s = IdempotencyStore(pool, lambda: True, ttl_s=60, wait_s=0.5, lease_s=30, poll_s=0.01)
    yield s
    pool.close()


def test_store_claim_replay_mismatch_in_flight(store) -> None:
    first = store.begin("mqtt:gw1", "m-42", b"fp")
    assert isinstance(first, Claimed)
    assert isinstance(store.begin("mqtt:gw1", "m-42", b"fp"), InFlight)  # waited 0.5 s, still running
    assert isinstance(store.begin("mqtt:gw1", "m-42", b"other"), Mismatch)
    store.finish(first, StoredAnswer(200, b'{"ok":1}', "application/json"))
    again = store.begin("mqtt:gw1", "m-42", b"fp")
    assert again == Replay(StoredAnswer(200, b'{"ok":1}', "application/json"))
    assert isinstance(store.begin("mqtt:gw2", "m-42", b"fp"), Claimed)  # another scope


def test_concurrent_duplicates_one_runs_the_others_get_its_answer(store) -> None:
    store.wait_s = 10
    results: list[object] = []
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        outcome = store.begin("s", "same", b"fp")
        if isinstance(outcome, Claimed):
            time.sleep(0.3)  # the request runs while the others wait
            store.finish(outcome, StoredAnswer(204, b"", ""))
        results.append(outcome)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sum(isinstance(r, Claimed) for r in results) == 1
    assert [r for r in results if not isinstance(r, Claimed)] == [Replay(StoredAnswer(204, b"", ""))] * 7


def test_release_expiry_lease_and_purge(store, database_url) -> None:
    c = store.begin("s", "k", b"fp")
    store.release(c)
    assert isinstance(store.begin("s", "k", b"fp"), Claimed)  # released: runs again
    with psycopg.connect(database_url, autocommit=True) as conn:
        # a claim whose owner died: its lease has passed
        conn.execute("UPDATE idempotency_keys SET lease_until = now() - interval '1 s' WHERE idem_key = 'k'")
        assert isinstance(store.begin("s", "k", b"fp"), Claimed)
        conn.execute("UPDATE idempotency_keys SET expires_at = now() - interval '1 s' WHERE idem_key = 'k'")
        c2 = store.begin("s", "k", b"new")  # expired: the key is free for a new request
        assert isinstance(c2, Claimed)
        store.finish(c2, StoredAnswer(200, b"", ""))
        conn.execute("UPDATE idempotency_keys SET expires_at = now() - interval '1 s'")
        assert store.purge_expired() == 1
        assert conn.execute("SELECT count(*) FROM idempotency_keys").fetchone()[0] == 0


def test_concurrent_duplicates_across_workers_store_once(make_live_server) -> None:
    srv = make_live_server(workers=2)
    body = "\n".join(f"device_id:idem-live,v{i}:{i}" for i in range(50))  # no times: server-timed
    headers = {**srv.headers(), "Idempotency-Key": "burst-1", "Content-Type": "text/plain"}

    def send(_: int) -> requests.Response:
        return requests.post(srv.url + "/telemetry/parse", data=body, headers=headers, timeout=60)

    with ThreadPoolExecutor(12) as ex:
        answers = list(ex.map(send, range(12)))
    assert {a.status_code for a in answers} == {200}, [(a.status_code, a.text[:200]) for a in answers]
    assert len({a.json()["batch_id"] for a in answers}) == 1  # all got the first answer
    assert sum(a.headers.get("Idempotent-Replayed") == "true" for a in answers) == 11
    assert srv.query("SELECT count(*) FROM telemetry_readings WHERE device_id = 'idem-live'")[0][0] == 50


def test_a_5xx_releases_the_key_so_the_retry_runs(app, db) -> None:
    from flask import Response

    from backend.api.idempotent import with_idempotency

    calls = []

    def answer(status: int):
        def run() -> Response:
            calls.append(status)
            return Response(b"{}", status=status, content_type="application/json")
        return run

    def send(status: int) -> Response:
        with app.test_request_context("/telemetry/parse", method="POST", data=b"device_id:idem,v:1",
                                      headers={"Idempotency-Key": "busy-1"}):
            return with_idempotency(answer(status))

    assert send(503).status_code == 503  # "not stored, retry later": the key is released
    assert db.execute("SELECT count(*) FROM idempotency_keys WHERE idem_key = 'busy-1'").fetchone()[0] == 0
    assert send(200).status_code == 200 and calls == [503, 200]  # the retry ran
    replay = send(200)
    assert replay.headers["Idempotent-Replayed"] == "true" and calls == [503, 200]  # and is now remembered
    assert db.execute("SELECT state, status FROM idempotency_keys WHERE idem_key = 'busy-1'").fetchone() == ("done", 200)
