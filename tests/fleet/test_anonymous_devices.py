"""ANONYMOUS_DEVICES: seed 002's producer (no key) may write its named devices, through its route only."""

from __future__ import annotations

import logging

import pytest

from backend.config import Config, ConfigError

SEED002 = {"timestamp": "2026-06-01T12:00:00Z", "signals": {"sine_wave": 3.5, "random_walk": -1.25}}


def test_off_by_default(client, db) -> None:
    anon = client.application.test_client()
    assert anon.post("/api/telemetry", json=SEED002).status_code == 401
    assert db.execute("SELECT count(*) FROM telemetry_readings").fetchone()[0] == 0


def test_named_devices_only_that_route_and_a_warning(make_app, db, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="backend.fleet.auth.hooks"):
        app = make_app(anonymous_devices=["default", "lab1"])
    assert any("ANONYMOUS_DEVICES" in r.message and "default, lab1" in r.message for r in caplog.records)
    anon = app.test_client()
    r = anon.post("/api/telemetry", json=SEED002)  # the seed's producer names no device: `default`
    assert r.status_code == 200 and r.json["status"] == "success" and r.json["accepted"] == 2
    assert anon.post("/api/telemetry?device_id=lab1", json=SEED002).status_code == 200
    other = anon.post("/api/telemetry?device_id=lab2", json=SEED002)
    assert other.status_code == 401 and other.headers["WWW-Authenticate"]
    assert "lab1" not in other.get_data(as_text=True)  # the list is not revealed
    assert anon.post("/api/telemetry", json={**SEED002, "device_id": "lab2"}).status_code == 401
    for path, kw in (("/telemetry/parse", {"data": "device_id:default,v:1"}), ("/api/ingest", {"json": SEED002}),
                     ("/api/v2/write", {"data": "m,host=default v=1"})):
        assert anon.post(path, **kw).status_code == 401, path
    assert anon.get("/api/telemetry").status_code == 401  # reading still needs a key
    got = db.execute("SELECT device_id, metric, value FROM telemetry_readings ORDER BY 1, 2").fetchall()
    assert got == [("default", "random_walk", -1.25), ("default", "sine_wave", 3.5),
                   ("lab1", "random_walk", -1.25), ("lab1", "sine_wave", 3.5)]
    # a keyed request is unaffected, and may write any device its key allows
    assert anon.post("/api/telemetry?device_id=lab2", json=SEED002,
                     headers={"Authorization": "Bearer test-admin-key"}).status_code == 200


def test_anonymous_resend_with_idempotency_key(make_app, db) -> None:
    anon = make_app(anonymous_devices=["default"]).test_client()
    body = {"signals": {"sine_wave": 1.0}}  # no time: server-timed, only the key deduplicates it
    for _ in range(2):
        assert anon.post("/api/telemetry", json=body, headers={"Idempotency-Key": "p-1"}).status_code == 200
    assert db.execute("SELECT count(*) FROM telemetry_readings").fetchone()[0] == 1


def test_bad_device_names_stop_the_start() -> None:
    with pytest.raises(ConfigError, match="ANONYMOUS_DEVICES"):
        Config.from_env({"ANONYMOUS_DEVICES": "ok,not ok"})
