"""What a client learns when the service cannot take its request: a stable reason code and
the request id, never the database's error text (hosts, ports, users, driver messages)."""

from __future__ import annotations

import logging
import re

import psycopg

from tests.live_server import wait_for

ADMIN = {"Authorization": "Bearer test-admin-key"}


def _leaks(text: str, database_url: str) -> list[str]:
    info = psycopg.conninfo.conninfo_to_dict(database_url)
    words = [str(info.get("host") or "127.0.0.1"), str(info.get("port")), str(info.get("user") or "postgres"),
             "psycopg", "connection", "server", "refused", "port"]
    return [w for w in words if w and w.lower() in text.lower()]


def test_503_with_database_unreachable_and_no_spool_names_no_database_detail(make_app, db_proxy, caplog):
    app = make_app(database_url=db_proxy.url, spool_dir="off", ack_timeout=2.0)
    c = app.test_client()
    assert c.post("/telemetry/parse", data="a:1", headers={**ADMIN, "X-Device-Id": "d1"},
                  content_type="text/plain").status_code == 200
    db_proxy.down()
    answers = []

    def refused() -> bool:
        # The first request waits out ACK_TIMEOUT, later ones meet an open circuit: both are 503s.
        r = c.post("/telemetry/parse", data=f"a:{len(answers)}", headers={**ADMIN, "X-Device-Id": "d1"},
                   content_type="text/plain")
        assert r.status_code in (200, 503), r.get_data(as_text=True)
        if r.status_code == 503:
            answers.append(r)
        return len(answers) >= 2

    with caplog.at_level(logging.WARNING):
        wait_for(refused, timeout=60)
    answers.append(c.get("/telemetry/query?device_id=d1", headers=ADMIN))  # a read that meets the outage
    buffer = app.extensions["telemetry"].buffer
    # What the write path knows of the failure: whatever its wording, none of it is for the client.
    details = [d for d in (buffer.stats.last_error, buffer.circuit_status()["reason"]) if d]
    assert details
    for r in answers:
        body = r.get_json()
        assert r.status_code == 503 and r.headers["Retry-After"], body
        text = r.get_data(as_text=True)
        assert not _leaks(text, db_proxy.url), body
        assert not [d for d in details if d[:60] in text], (details, body)
        assert body["success"] is False and body["reason"] and body["request_id"] == r.headers["X-Request-Id"]
    # The detail is in the log, under the request id the client was given.
    logged = [rec.getMessage() for rec in caplog.records if answers[0].get_json()["request_id"] in rec.getMessage()]
    assert logged, [rec.getMessage() for rec in caplog.records]


def test_request_id_is_echoed_or_made(client):
    r = client.get("/telemetry/batch/status", headers={"X-Request-Id": "gw-7.batch:42"})
    assert r.headers["X-Request-Id"] == "gw-7.batch:42"
    made = client.get("/telemetry/batch/status").headers["X-Request-Id"]
    assert re.fullmatch(r"[0-9a-f]{32}", made)
    assert client.get("/telemetry/batch/status").headers["X-Request-Id"] != made
    # An id that is not a short printable token is replaced, not echoed into headers and logs.
    r = client.get("/telemetry/batch/status", headers={"X-Request-Id": "x" * 200})
    assert re.fullmatch(r"[0-9a-f]{32}", r.headers["X-Request-Id"])
    # Error bodies carry it too, also when the auth hook answers before any view runs.
    r = client.get("/telemetry/query", headers={"Authorization": "Bearer wrong", "X-Request-Id": "abc"})
    assert r.status_code == 401 and r.get_json()["request_id"] == "abc" == r.headers["X-Request-Id"]
