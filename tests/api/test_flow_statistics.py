"""GET /api/flow-statistics (seed 004): flow rate avg/min/max and volume from the totalizer's
increase, a reset or wrap never negative volume; readings go in through FluxIO's own ingest."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)


def iso(dt: datetime) -> str:
    return dt.isoformat().replace("+00:00", "Z")


def ingest(client, device: str, series: list[tuple[datetime, float | None, float | None]]) -> None:
    rows = []
    for ts, rate, total in series:
        row = {"device_id": device, "timestamp": iso(ts)}
        if rate is not None:
            row["flow_rate"] = rate
        if total is not None:
            row["totalizer"] = total
        rows.append(row)
    r = client.post("/api/ingest", json=rows)
    assert r.status_code == 200, r.get_json()


def stats(client, **params):
    r = client.get("/api/flow-statistics", query_string=params)
    assert r.status_code == 200, r.get_json()
    return r.get_json()


def test_rates_and_volume_of_a_steady_meter(client, db):
    # Every 10 minutes for 3 hours: rate 10 + i, the totalizer up by 2.5 per step.
    series = [(T0 + timedelta(minutes=10 * i), 10.0 + i, 1000.0 + 2.5 * i) for i in range(18)]
    ingest(client, "nivus-1", series)
    ingest(client, "nivus-2", [(T0, 99.0, 5.0), (T0 + timedelta(minutes=5), 1.0, 500.0)])  # another device
    body = stats(client, device_id="nivus-1", start_time=iso(T0), end_time=iso(T0 + timedelta(hours=3)))
    assert body["avg_flow_rate"] == pytest.approx(sum(10 + i for i in range(18)) / 18)
    assert (body["min_flow_rate"], body["max_flow_rate"]) == (10, 27)
    assert body["total_volume"] == pytest.approx(2.5 * 17)
    assert body["flow_rate_readings"] == 18 and body["totalizer_readings"] == 18
    assert body["totalizer_resets"] == 0 and "data" not in body
    assert body["metrics"] == {"flow_rate": "flow_rate", "totalizer": "totalizer"}

    # end_time is inclusive (as /api/flow-data): up to and including the reading at 10:50.
    body = stats(client, device_id="nivus-1", start_time=iso(T0), end_time=iso(T0 + timedelta(minutes=50)))
    assert body["flow_rate_readings"] == 6 and body["total_volume"] == pytest.approx(2.5 * 5)


def test_a_reset_and_a_wrap_never_count_as_negative_volume(client, db):
    t = [T0 + timedelta(minutes=m) for m in range(0, 80, 10)]
    # 100 -> 110 -> 125 | reset to 0, counts 3 -> 7 | wraps below: 2 -> 6
    totals = [100.0, 110.0, 125.0, 3.0, 7.0, 9999.0, 2.0, 6.0]
    ingest(client, "meter", [(ts, 1.0, v) for ts, v in zip(t, totals, strict=True)])
    body = stats(client, device_id="meter", start_time=iso(T0), end_time=iso(t[-1]))
    # Steps: +10, +15, reset (counts 3), +4, +9992, wrap (counts 2), +4
    assert body["total_volume"] == pytest.approx(10 + 15 + 3 + 4 + 9992 + 2 + 4)
    assert body["total_volume"] > 0
    assert body["totalizer_resets"] == 2

    # A meter that only ever resets: still nothing negative.
    ingest(client, "dropper", [(T0 + timedelta(minutes=i), None, 50.0 - 10 * i) for i in range(5)])
    body = stats(client, device_id="dropper", start_time=iso(T0), end_time=iso(T0 + timedelta(hours=1)))
    assert body["total_volume"] == pytest.approx(40 + 30 + 20 + 10) and body["totalizer_resets"] == 4


def test_hourly_and_daily_buckets_add_up_to_the_total(client, db):
    # 1 reading every 15 minutes for 30 hours, a reset in hour 5.
    series = []
    total = 0.0
    for i in range(120):
        ts = T0 + timedelta(minutes=15 * i)
        total = 1.0 if i == 20 else total + 0.5
        series.append((ts, float(i % 7), total))
    ingest(client, "bucketed", series)
    q = {"device_id": "bucketed", "start_time": iso(T0), "end_time": iso(T0 + timedelta(hours=30))}
    whole = stats(client, **q)
    hourly = stats(client, **q, bucket="hour")
    assert hourly["bucket"] == "hour" and len(hourly["data"]) == 30
    assert hourly["data"][0]["bucket"] == iso(T0)
    assert sum(b["total_volume"] for b in hourly["data"]) == pytest.approx(whole["total_volume"])
    assert sum(b["flow_rate_readings"] for b in hourly["data"]) == 120
    # The first bucket's first reading has no step before it in the range.
    assert hourly["data"][0]["total_volume"] == pytest.approx(1.5)
    reset_hour = T0 + timedelta(hours=5)
    by = {b["bucket"]: b for b in hourly["data"]}
    assert by[iso(reset_hour)]["totalizer_resets"] == 1
    assert by[iso(reset_hour)]["total_volume"] == pytest.approx(1.0 + 0.5 * 3)  # reset reading counts 1.0
    daily = stats(client, **q, bucket="day")
    assert [b["bucket"] for b in daily["data"]] == ["2026-03-02T00:00:00Z", "2026-03-03T00:00:00Z"]
    assert sum(b["total_volume"] for b in daily["data"]) == pytest.approx(whole["total_volume"])
    assert daily["data"][0]["min_flow_rate"] == 0 and daily["data"][0]["max_flow_rate"] == 6


def test_without_a_device_the_whole_fleet_each_meter_from_its_own_totalizer(client, db):
    # Two meters whose totalizers are far apart: one series would see huge fake steps.
    ingest(client, "a", [(T0 + timedelta(minutes=i), 2.0, 10.0 + i) for i in range(5)])
    ingest(client, "b", [(T0 + timedelta(minutes=i, seconds=30), 4.0, 90000.0 + 2 * i) for i in range(5)])
    body = stats(client, start_time=iso(T0), end_time=iso(T0 + timedelta(hours=1)))
    assert body["device_id"] is None
    assert body["total_volume"] == pytest.approx(4 * 1 + 4 * 2) and body["totalizer_resets"] == 0
    assert body["avg_flow_rate"] == pytest.approx(3.0) and body["flow_rate_readings"] == 10


def test_no_readings_gives_empty_figures(client, db):
    body = stats(client, device_id="nobody", start_time=iso(T0), end_time=iso(T0 + timedelta(hours=1)))
    assert body["avg_flow_rate"] is None and body["total_volume"] is None
    assert body["flow_rate_readings"] == 0 and body["totalizer_readings"] == 0


@pytest.mark.parametrize(("query", "name"), [
    ({"device_id": "a", "bucket": "week"}, "bucket"),
    ({"device_id": "a", "start_time": "noon"}, "start_time"),
    ({"device_id": "a", "end_time": "2026-13-01"}, "end_time"),
    ({"device_id": "a", "start_time": "2026-03-02", "end_time": "2026-03-01"}, "start_time"),
    ({"device_id": "a", "interval": "1h"}, "interval"),
    ({"device_id": "a\x00"}, "device_id"),
])
def test_bad_or_unknown_parameters_are_a_400_naming_them(client, query, name):
    r = client.get("/api/flow-statistics", query_string=query)
    assert r.status_code == 400, r.get_json()
    body = r.get_json()
    assert body["parameter"] == name and name in body["error"], body


def test_needs_a_read_key(app):
    assert app.test_client().get("/api/flow-statistics?device_id=a").status_code == 401
