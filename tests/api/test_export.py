"""GET /telemetry/export: every matching reading (or aggregate bucket) as CSV or NDJSON, streamed
from PostgreSQL's COPY with flat memory; content equal to what /telemetry/query and
/telemetry/aggregate answer."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
import requests

from tests.live_server import wait_for

T0 = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)


def parse_ts(s: str) -> datetime:
    return datetime.fromisoformat(s.replace("Z", "+00:00"))


def csv_rows(body: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(body.decode())))


def ndjson_rows(body: bytes) -> list[dict]:
    assert body.endswith(b"\n")
    return [json.loads(line) for line in body.decode().split("\n")[:-1]]


@pytest.fixture
def readings(db):
    db.execute("INSERT INTO telemetry_readings (device_id, metric, ts, value)"
               " SELECT 'd' || (g %% 3), CASE WHEN g %% 2 = 0 THEN 'alt' ELSE 'roll' END,"
               " %s::timestamptz + g * interval '7 seconds', g * 0.25 - 10 FROM generate_series(0, 599) g", (T0,))
    odd = 'quote " comma , backslash \\ newline \n tab \t unicode é ✓'
    db.execute("INSERT INTO telemetry_readings (device_id, metric, ts, value_text) VALUES"
               " ('d1', 'mode', %s, %s), ('d1', 'mode', %s, '')", (T0, odd, T0 + timedelta(seconds=1)))
    return odd


def test_csv_and_ndjson_hold_exactly_what_the_query_returns(client, readings):
    q = {"device_id": "d1,d2", "start": (T0 + timedelta(minutes=5)).isoformat(),
         "end": (T0 + timedelta(minutes=50)).isoformat()}
    ref = client.get("/telemetry/query", query_string={**q, "limit": 10000}).get_json()["data"]
    expected = {(r["device_id"], r["metric"], parse_ts(r["ts"]), r["value"]) for r in ref}
    assert len(expected) > 200

    r = client.get("/telemetry/export", query_string={**q, "format": "csv"})
    assert r.status_code == 200 and r.mimetype == "text/csv"
    assert "attachment" in r.headers["Content-Disposition"]
    rows = csv_rows(r.data)
    assert list(rows[0]) == ["device_id", "metric", "ts", "value", "created_at"]
    assert {(x["device_id"], x["metric"], parse_ts(x["ts"]), float(x["value"])) for x in rows} == expected
    assert len(rows) == len(expected)
    # Default order: by time, oldest first, ties by device and metric.
    keys = [(parse_ts(x["ts"]), x["device_id"], x["metric"]) for x in rows]
    assert keys == sorted(keys)
    series = csv_rows(client.get("/telemetry/export", query_string={**q, "order_by": "series"}).data)
    keys = [(x["device_id"], x["metric"], parse_ts(x["ts"])) for x in series]
    assert keys == sorted(keys) and len(series) == len(rows)
    # Times in UTC whatever the server's TimeZone (set for the export's transaction only).
    assert all(x["ts"].endswith("Z") and x["created_at"].endswith("Z") and "T" in x["ts"] for x in rows)

    r = client.get("/telemetry/export", query_string={**q, "format": "ndjson"})
    assert r.status_code == 200 and r.mimetype == "application/x-ndjson"
    docs = ndjson_rows(r.data)
    assert all(x["ts"].endswith("Z") and "T" in x["ts"] for x in docs)
    assert {(x["device_id"], x["metric"], parse_ts(x["ts"]), x["value"]) for x in docs} == expected
    assert len(docs) == len(expected)


def test_text_values_survive_both_formats_byte_for_byte(client, readings):
    odd = readings
    for fmt, parse in (("csv", csv_rows), ("ndjson", ndjson_rows)):
        r = client.get("/telemetry/export", query_string={"format": fmt, "metric": "mode"})
        assert r.status_code == 200
        got = [(x["ts"], x["value"]) for x in parse(r.data)]
        assert [v for _, v in got] == [odd, ""], fmt
        assert parse_ts(got[0][0]) == T0


def test_order_desc_and_limit(client, readings):
    r = client.get("/telemetry/export", query_string={"format": "ndjson", "order_by": "ts", "desc": "true",
                                                      "limit": 5, "metric": "alt"})
    docs = ndjson_rows(r.data)
    assert len(docs) == 5
    assert [parse_ts(d["ts"]) for d in docs] == [T0 + timedelta(seconds=7 * g) for g in (598, 596, 594, 592, 590)]
    assert docs[0]["value"] == 598 * 0.25 - 10


@pytest.mark.parametrize("agg", ["avg", "min", "max", "sum", "count", "first", "last"])
def test_aggregate_export_equals_the_aggregate_answer(client, readings, agg):
    q = {"metric": "alt", "bucket": "5m", "agg": agg, "start": T0.isoformat(),
         "end": (T0 + timedelta(hours=2)).isoformat()}
    ref = client.get("/telemetry/aggregate", query_string=q).get_json()["data"]
    assert len(ref) > 10
    expected = [(parse_ts(x["bucket"]), x["device_id"], x["value"], x["count"]) for x in ref]
    r = client.get("/telemetry/export", query_string={**q, "kind": "aggregate", "format": "ndjson"})
    assert r.status_code == 200
    got = [(parse_ts(x["bucket"]), x["device_id"], x["value"], x["count"]) for x in ndjson_rows(r.data)]
    assert got == expected
    r = client.get("/telemetry/export", query_string={**q, "kind": "aggregate", "format": "csv"})
    rows = csv_rows(r.data)
    assert [(parse_ts(x["bucket"]), x["device_id"], float(x["value"]), int(x["count"])) for x in rows] == expected


@pytest.mark.parametrize(("query", "name"), [
    ({"format": "xml"}, "format"),
    ({"kind": "raw"}, "kind"),
    ({"devce_id": "d1"}, "devce_id"),
    ({"bucket": "1h"}, "bucket"),  # an aggregate's parameter on a query export
    ({"kind": "aggregate", "metric": "alt", "limit": "5"}, "limit"),
    ({"kind": "aggregate"}, "metric"),
    ({"kind": "aggregate", "metric": "alt", "layout": "series"}, "layout"),  # an export is rows
    ({"limit": "0"}, "limit"),
    ({"start": "yesterday"}, "start"),
    ({"order_by": "colour"}, "order_by"),
])
def test_bad_parameters_are_a_400_naming_them(client, query, name):
    r = client.get("/telemetry/export", query_string=query)
    assert r.status_code == 400, r.data
    body = r.get_json()
    assert body["parameter"] == name and name in body["error"], body


def test_an_aggregate_export_refuses_what_the_aggregate_refuses(client):
    r = client.get("/telemetry/export", query_string={"kind": "aggregate", "metric": "alt", "tz": "Mars/Olympus"})
    assert r.status_code == 400 and "tz" in r.get_json()["error"], r.data


def test_start_after_end_is_a_400(client):
    r = client.get("/telemetry/export", query_string={"start": "2026-01-02", "end": "2026-01-01"})
    assert r.status_code == 400 and "start is after end" in r.get_json()["error"]


def test_concurrent_exports_are_bounded_per_worker(make_app, readings):
    app = make_app(export_max_concurrent=1)
    c = app.test_client()
    c.environ_base["HTTP_AUTHORIZATION"] = "Bearer test-admin-key"
    first = c.get("/telemetry/export", buffered=False)
    assert first.status_code == 200
    busy = c.get("/telemetry/export")
    assert busy.status_code == 503 and busy.get_json()["reason"] == "export_busy"
    assert int(busy.headers["Retry-After"]) > 0
    first.close()  # the client went away: the slot is free again
    again = c.get("/telemetry/export", query_string={"metric": "mode"})
    assert again.status_code == 200 and len(csv_rows(again.data)) == 2


def test_export_needs_a_read_key(app):
    assert app.test_client().get("/telemetry/export").status_code == 401


# ---- a real gunicorn worker, a million rows ---------------------------------------------------

N = 1_000_000
BASE = datetime(2026, 2, 1, tzinfo=UTC)


def execute(url: str, query: str, *params: object) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(query, params or None)


def vm_kb(pid: int, field: str) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(field)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["csv", "ndjson"])
def test_a_million_rows_stream_with_flat_worker_memory(make_live_server, database_url, fmt):
    server = make_live_server(workers=1, threads=4)
    server.query("SELECT telemetry_ensure_partitions('2026-02-01', 1)")
    execute(server.database_url, "INSERT INTO telemetry_readings (device_id, metric, ts, value, received_at)"
            " SELECT 'm' || (g %% 10), 'alt', %s::timestamptz + g * interval '1 millisecond', g * 0.25, %s"
            f" FROM generate_series(0, {N - 1}) g", BASE, BASE)
    pid, = server.worker_pids()
    # Warm the worker (imports, first connection) so the figure measures the export itself.
    assert server.get("/telemetry/export", params={"limit": 10}).status_code == 200
    hwm_before, rss_before = vm_kb(pid, "VmHWM"), vm_kb(pid, "VmRSS")

    seen = 0
    bad = []
    with requests.get(server.url + "/telemetry/export", params={"format": fmt, "metric": "alt"},
                      headers=server.headers(), stream=True, timeout=120) as r:
        assert r.status_code == 200
        lines = r.iter_lines(chunk_size=256 * 1024)
        if fmt == "csv":
            assert next(lines) == b"device_id,metric,ts,value,created_at"
        rss_during = 0
        for line in lines:
            if fmt == "csv":
                device, metric, ts, value, created = line.decode().split(",")
            else:
                d = json.loads(line)
                device, metric, ts, value, created = d["device_id"], d["metric"], d["ts"], d["value"], d["created_at"]
            g = round((parse_ts(ts) - BASE).total_seconds() * 1000)
            if (device, metric, float(value), parse_ts(created)) != (f"m{g % 10}", "alt", g * 0.25, BASE):
                bad.append(line)
            seen += 1
            if seen == N // 2:
                rss_during = vm_kb(pid, "VmRSS")
    growth_mb = (vm_kb(pid, "VmHWM") - hwm_before) / 1024
    print(f"{fmt}: {seen} rows; worker RSS {rss_before / 1024:.0f} MB before, {rss_during / 1024:.0f} MB halfway;"
          f" peak grew {growth_mb:.1f} MB")
    assert seen == N and not bad[:3]
    assert growth_mb < 50, growth_mb  # a buffered 1 M-row answer would be 60-130 MB of bytes alone


@pytest.mark.slow
def test_a_client_that_goes_away_cancels_the_query_and_frees_the_slot(make_live_server):
    server = make_live_server(env={"EXPORT_MAX_CONCURRENT": "1"}, workers=1, threads=4)
    execute(server.database_url, "INSERT INTO telemetry_readings (device_id, metric, ts, value)"
            " SELECT 'c', 'alt', now() - g * interval '1 millisecond', g FROM generate_series(1, 300000) g")
    r = requests.get(server.url + "/telemetry/export", headers=server.headers(), stream=True, timeout=60)
    assert r.status_code == 200
    next(r.iter_content(65536))
    assert server.get("/telemetry/export").status_code == 503  # the one slot is taken
    r.close()

    def copy_gone() -> bool:
        return not server.query("SELECT 1 FROM pg_stat_activity WHERE query LIKE 'COPY (SELECT device_id%%'"
                                " AND pid <> pg_backend_pid()")

    wait_for(copy_gone, timeout=60, interval=0.2)
    wait_for(lambda: server.get("/telemetry/export", params={"limit": 1}).status_code == 200, timeout=60,
             interval=0.2)
