"""Reading telemetry back: filters, order, pagination, wide pivot, buckets, injection."""

from __future__ import annotations

import pytest

RAW = {"Content-Type": "text/plain"}


@pytest.fixture
def loaded(client, db):
    lines = []
    for i in range(10):
        lines.append(f"device_id:a,ts:2026-11-23T10:00:{i:02d}Z,alt:{i},pitch:{-i},mode:M{i % 2}")
        lines.append(f"device_id:b,ts:2026-11-23T10:00:{i:02d}Z,alt:{100 + i}")
    r = client.post("/telemetry/parse", data="\n".join(lines), headers=RAW)
    assert r.status_code == 200 and r.json["accepted"] == 40
    return client


def test_default_query_is_seed_shaped(loaded):
    body = loaded.get("/telemetry/query").json
    assert body["success"] is True and body["count"] == 40 and body["limit"] == 100 and body["offset"] == 0
    first = body["data"][0]
    assert set(first) == {"device_id", "metric", "ts", "value", "received_at"}
    assert first["ts"] == "2026-11-23T10:00:09Z"


def test_filters_order_and_pages(loaded):
    q = loaded.get("/telemetry/query?device_id=a&metric=alt&order_by=ts&desc=false&limit=3&offset=2").json
    assert [(d["ts"][-3:], d["value"]) for d in q["data"]] == [("02Z", 2), ("03Z", 3), ("04Z", 4)]
    q = loaded.get("/telemetry/query?device_id=b&start=2026-11-23T10:00:05Z&end=2026-11-23T10:00:07Z").json
    assert [d["value"] for d in q["data"]] == [106, 105]
    q = loaded.get("/telemetry/query?metric=mode&device_id=a&limit=2").json
    assert [d["value"] for d in q["data"]] == ["M1", "M0"]
    q = loaded.get("/telemetry/query?metric=alt&order_by=value&desc=true&limit=1").json
    assert q["data"][0]["value"] == 109


def test_wide_format_pivots_like_seed_rows(loaded):
    q = loaded.get("/telemetry/query?format=wide&device_id=a&limit=2").json
    assert q["count"] == 2
    assert q["data"][0] == {"device_id": "a", "ts": "2026-11-23T10:00:09Z",
                            "created_at": q["data"][0]["created_at"], "alt": 9, "pitch": -9, "mode": "M1"}


@pytest.mark.parametrize("params", [
    "order_by=ts;DROP TABLE telemetry_readings",
    "order_by=value)--",
    "order_by=pg_sleep(1)",
    "limit=0", "limit=abc", "limit=100001", "offset=-1", "desc=maybe",
    "start=not-a-time", "start=2026-11-24T00:00:00Z&end=2026-11-23T00:00:00Z",
])
def test_bad_parameters_are_400(loaded, db, params):
    r = loaded.get("/telemetry/query?" + params)
    assert r.status_code == 400, r.json
    assert r.json["success"] is False and r.json["error"]
    assert db.execute("SELECT count(*) FROM telemetry_readings").fetchone() == (40,)


def test_time_buckets(loaded):
    q = loaded.get("/telemetry/aggregate?metric=alt&device_id=a&bucket=10s&agg=avg"
                   "&start=2026-11-23T10:00:00Z&end=2026-11-23T10:01:00Z").json
    assert q["data"] == [{"bucket": "2026-11-23T10:00:00Z", "device_id": "a", "value": 4.5, "count": 10}]
    q = loaded.get("/telemetry/aggregate?metric=alt&bucket=1m&agg=max"
                   "&start=2026-11-23T10:00:00Z&end=2026-11-23T10:01:00Z").json
    assert [(d["device_id"], d["value"]) for d in q["data"]] == [("a", 9.0), ("b", 109.0)]
    assert loaded.get("/telemetry/aggregate?metric=alt&bucket=7m").status_code == 400
    assert loaded.get("/telemetry/aggregate?bucket=1m").status_code == 400
