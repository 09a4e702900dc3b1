"""/telemetry/query: keyset pages (`next`) and downsample=N, on real PostgreSQL."""

from __future__ import annotations

import base64
import math
from datetime import UTC, datetime, timedelta

import orjson
import pytest

RAW = {"Content-Type": "text/plain"}
T0 = datetime(2026, 11, 23, 10, tzinfo=UTC)


@pytest.fixture
def loaded(client, db):
    lines = []
    for i in range(60):
        ts = (T0 + timedelta(seconds=i)).isoformat()  # four readings share each time, many a value: ties
        for d in ("a", "b"):
            lines.append(f"device_id:{d},ts:{ts},alt:{(i * 7 + len(d)) % 11},pitch:{i % 5}")
        if i % 4 == 0:
            lines.append(f"device_id:a,ts:{(T0 + timedelta(seconds=i, milliseconds=500)).isoformat()},mode:M{i % 3}")
    r = client.post("/telemetry/parse", data="\n".join(lines), headers=RAW)
    assert r.status_code == 200, r.json
    return client


def _key(d):
    return d["device_id"], d["metric"], d["ts"]


@pytest.mark.parametrize("order_by", ["ts", "created_at", "device_id", "metric", "value"])
@pytest.mark.parametrize("desc", ["true", "false"])
@pytest.mark.parametrize("devices", ["", "a,b"])
def test_next_pages_cover_every_row_once_in_order(loaded, db, order_by, desc, devices):
    base = {"order_by": order_by, "desc": desc, "start": T0.isoformat(), "end": (T0 + timedelta(hours=1)).isoformat()}
    if devices:
        base["device_id"] = devices
    whole = loaded.get("/telemetry/query", query_string={**base, "limit": 10_000}).json
    total = db.execute("SELECT count(*) FROM telemetry_readings").fetchone()[0]
    assert whole["count"] == total and whole["next"] is None
    pages, token = [], None
    while True:
        r = loaded.get("/telemetry/query", query_string={**base, "limit": 7, **({"next": token} if token else {})})
        assert r.status_code == 200, r.json
        pages += r.json["data"]
        token = r.json["next"]
        if token is None:
            break
        assert r.json["count"] == 7
    assert [_key(d) for d in pages] == [_key(d) for d in whole["data"]]
    assert len({_key(d) for d in pages}) == total


def test_bad_cursors_are_400_naming_next(loaded):
    first = loaded.get("/telemetry/query?metric=alt&limit=5").json
    assert first["next"]
    good = first["next"]
    second = loaded.get(f"/telemetry/query?metric=alt&limit=5&next={good}").json
    assert second["data"][0]["ts"] <= first["data"][-1]["ts"] and second["data"] != first["data"]
    forged = base64.urlsafe_b64encode(orjson.dumps([1, "0" * 16, [{"t": T0.isoformat()}, "a", "alt"]])).decode()
    wrong_shape = base64.urlsafe_b64encode(orjson.dumps([1, "x", [1, 2]])).decode()
    for bad in ("garbage!", good[:-3], good + "AA", forged, wrong_shape, "e30"):
        r = loaded.get("/telemetry/query", query_string={"metric": "alt", "limit": 5, "next": bad})
        assert r.status_code == 400 and r.json["error"].startswith("next:"), (bad, r.json)
    other = loaded.get("/telemetry/query", query_string={"metric": "pitch", "limit": 5, "next": good})
    assert other.status_code == 400 and other.json["error"].startswith("next:")
    both = loaded.get("/telemetry/query", query_string={"metric": "alt", "limit": 5, "next": good, "offset": 5})
    assert both.status_code == 400 and both.json["error"].startswith("offset:")


def test_downsample_keeps_the_shape_of_raw_series(client, db):
    lines = []
    for i in range(1000):
        v = math.sin(i / 50) * 10 + (100 if i == 333 else 0)  # one spike
        lines.append(f"device_id:s,ts:{(T0 + timedelta(seconds=i)).isoformat()},alt:{v:.6f},pitch:{i}")
    assert client.post("/telemetry/parse", data="\n".join(lines), headers=RAW).status_code == 200
    r = client.get("/telemetry/query", query_string={"device_id": "s", "downsample": 50,
                                                     "start": T0.isoformat(), "end": (T0 + timedelta(hours=1)).isoformat()})
    assert r.status_code == 200, r.json
    by_metric = {}
    for d in r.json["data"]:
        by_metric.setdefault(d["metric"], []).append(d)
    assert {m: len(v) for m, v in by_metric.items()} == {"alt": 50, "pitch": 50}
    alt = by_metric["alt"]
    assert alt[0]["ts"] == T0.isoformat().replace("+00:00", "Z") and max(d["value"] for d in alt) > 100
    assert [d["ts"] for d in alt] == sorted(d["ts"] for d in alt)
    agg = client.get("/telemetry/aggregate", query_string={"metric": "alt", "device_id": "s", "bucket": "10s",
                                                           "downsample": 20, "start": T0.isoformat(),
                                                           "end": (T0 + timedelta(seconds=1000)).isoformat()}).json
    assert agg["count"] == 20
    for bad in ("downsample=1", "downsample=5&offset=3", "downsample=5&format=wide"):
        assert client.get("/telemetry/query?" + bad).status_code == 400
