"""End to end: simulated Nivus transmitters -> `python -m backend.modbus run` (a real
process) -> the real ingest service (gunicorn) -> the real PostgreSQL, including an API
outage in the middle."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from backend.modbus.registers import WordOrder
from backend.modbus.simulator import SimServer, SimulatedDevice
from tests.live_server import free_port, wait_for

pytestmark = pytest.mark.timeout(120)
ROOT = Path(__file__).resolve().parent.parent


def queued(path: Path) -> list[dict[str, Any]]:
    db = sqlite3.connect(path)
    try:
        return [json.loads(p) for (p,) in db.execute("SELECT payload FROM outbox ORDER BY id")]
    except sqlite3.OperationalError:
        return []
    finally:
        db.close()


# The contract names /api/ingest and says /telemetry/parse accepts the same body.
@pytest.mark.parametrize("ingest_path", ["/api/ingest", "/telemetry/parse"])
def test_nivus_readings_reach_postgres_and_survive_an_api_outage(live_server, tmp_path: Path, ingest_path: str):
    modbus_port = free_port()
    inlet, outlet, broken = SimulatedDevice(1), SimulatedDevice(2), SimulatedDevice(3)
    inlet.set_nivus(12.5, 4242.25, 14.75, 0x0001, order=WordOrder.CDAB)
    outlet.set_nivus(0.1, 17.0, -2.5, 0x0000, order=WordOrder.ABCD)
    broken.silent = True
    config = tmp_path / "poller.toml"
    config.write_text(
        f"""
[api]
url = "{live_server.url}"
api_key = "{live_server.api_key}"
path = "{ingest_path}"
batch_size = 50
timeout = 5
retry_min = 0.05
retry_max = 0.5
auth_retry = 0.5

[queue]
path = "queue.sqlite3"

[connections.gw]
transport = "tcp"
host = "127.0.0.1"
port = {modbus_port}
timeout = 0.3
retries = 0

[[devices]]
id = "nivus-inlet"
connection = "gw"
unit = 1
map = "nivus"
order = "CDAB"
poll_period = 0.2

[[devices]]
id = "nivus-outlet"
connection = "gw"
unit = 2
map = "nivus"
poll_period = 0.2

[[devices]]
id = "nivus-broken"
connection = "gw"
unit = 3
map = "nivus"
poll_period = 0.2
backoff_max = 0.5
"""
    )
    queue_path = tmp_path / "queue.sqlite3"
    log_path = tmp_path / "poller.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "backend.modbus", "run", "--config", str(config)]

    def rows(device: str, metric: str) -> list[tuple]:
        return live_server.query(
            "SELECT ts, value, value_text FROM telemetry_readings WHERE device_id = %s AND metric = %s ORDER BY ts",
            device,
            metric,
        )

    with SimServer([inlet, outlet, broken], port=modbus_port), open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            # 1. Exact values, every metric, in PostgreSQL.
            wait_for(lambda: rows("nivus-inlet", "status_system_error") and rows("nivus-outlet", "status"))
            assert {r[1] for r in rows("nivus-inlet", "flow_rate")} == {12.5}
            assert {r[1] for r in rows("nivus-inlet", "totalizer")} == {4242.25}
            assert {r[1] for r in rows("nivus-inlet", "temperature")} == {14.75}
            assert {r[1] for r in rows("nivus-inlet", "status")} == {1.0}
            assert {r[1] for r in rows("nivus-inlet", "status_sensor_error")} == {1.0}
            assert {r[1] for r in rows("nivus-outlet", "flow_rate")} == {0.1}
            assert {r[1] for r in rows("nivus-outlet", "temperature")} == {-2.5}
            assert {r[1] for r in rows("nivus-inlet", "modbus_ok")} == {1.0}
            # 2. The silent sensor: health readings only, with the reason as text.
            wait_for(lambda: rows("nivus-broken", "modbus_error"))
            assert {r[1] for r in rows("nivus-broken", "modbus_ok")} == {0.0}
            assert all("no response" in r[2] for r in rows("nivus-broken", "modbus_error"))
            assert rows("nivus-broken", "flow_rate") == []

            # 3. API outage: polls continue into the disk queue ...
            live_server.stop()
            inlet.set_nivus(33.5, 4300.0, 15.0, 0x0000, order=WordOrder.CDAB)
            during = wait_for(
                lambda: (
                    [r for r in queued(queue_path) if r["device_id"] == "nivus-inlet" and r.get("flow_rate") == 33.5]
                    if len([r for r in queued(queue_path) if r.get("flow_rate") == 33.5]) >= 5
                    else None
                )
            )
            # ... and arrive once it is back, in full.
            live_server.start()
            wanted = {datetime.fromisoformat(r["ts"]) for r in during}
            wait_for(lambda: wanted <= {r[0] for r in rows("nivus-inlet", "flow_rate") if r[1] == 33.5}, timeout=60)
            wait_for(lambda: len(queued(queue_path)) < 5)
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(20)
    assert code == 0, log_path.read_text()[-3000:]
    duplicates = live_server.query(
        "SELECT device_id, metric, ts, count(*) FROM telemetry_readings GROUP BY 1, 2, 3 HAVING count(*) > 1"
    )
    assert duplicates == []
    # Every poll of the inlet has all of its metrics: no half-stored records.
    per_ts = live_server.query(
        "SELECT ts, count(*) FROM telemetry_readings WHERE device_id = 'nivus-inlet' GROUP BY ts"
    )
    assert {n for _ts, n in per_ts} == {12}  # 4 values + 7 status bits + modbus_ok


def test_wrong_api_key_keeps_readings_queued_until_the_key_is_fixed(live_server, tmp_path: Path):
    from backend.modbus.forwarder import DiskQueue, Forwarder

    queue = DiskQueue(tmp_path / "queue.sqlite3")
    record = {"device_id": "nivus-key", "ts": "2026-03-01T12:00:00.000+00:00", "flow_rate": 1.25, "modbus_ok": 1}
    wrong = Forwarder(queue, live_server.url + "/api/ingest", "not-a-key", auth_retry=0.1)
    wrong.submit([record])
    outcome = wrong.send_once()
    assert outcome.kind == "retry" and outcome.status in (401, 403)
    assert len(queue) == 1 and queue.dead_letters() == []
    right = Forwarder(queue, live_server.url + "/api/ingest", live_server.api_key)
    assert right.flush(timeout=30)
    rows = live_server.query(
        "SELECT metric, value FROM telemetry_readings WHERE device_id = 'nivus-key' ORDER BY metric"
    )
    assert rows == [("flow_rate", 1.25), ("modbus_ok", 1.0)]
    queue.close()


@pytest.mark.parametrize("transport", ["tcp", "rtu"])
def test_all_four_word_orders_land_exactly_in_postgres(live_server, tmp_path: Path, transport: str):
    """Four transmitters, one per word order, polled once by the real CLI over TCP or over
    RTU on a virtual serial pair, delivered through the ingest API into PostgreSQL."""
    import shutil

    from backend.modbus.registers import shortest_float32
    from tests.test_modbus_poller import NIVUS_VALUES, SocatPair

    orders = list(WordOrder)
    sims = []
    for unit, order in enumerate(orders, start=1):
        sim = SimulatedDevice(unit)
        sim.set_nivus(*NIVUS_VALUES[order], order=order)
        sims.append(sim)
    pair = None
    if transport == "rtu":
        if shutil.which("socat") is None:
            pytest.skip("socat is not installed (apt-get install socat): no virtual serial pair for RTU")
        pair = SocatPair(tmp_path).start()
        server = SimServer(sims, serial_port=pair.a, baudrate=115200)
        connection = f'transport = "rtu"\nserial_port = "{pair.b}"\nbaudrate = 115200'
    else:
        port = free_port()
        server = SimServer(sims, port=port)
        connection = f'transport = "tcp"\nhost = "127.0.0.1"\nport = {port}'
    devices = "".join(
        f'\n[[devices]]\nid = "nivus-{o.value}"\nconnection = "c1"\nunit = {u}\nmap = "nivus"\norder = "{o.value}"\n'
        for u, o in enumerate(orders, start=1))
    config = tmp_path / "poller.toml"
    config.write_text(f"""
[api]
url = "{live_server.url}"
api_key = "{live_server.api_key}"
path = "/api/ingest"

[queue]
path = "queue.sqlite3"

[connections.c1]
{connection}
timeout = 1.0
retries = 1
{devices}""")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with server:
        try:
            done = subprocess.run([sys.executable, "-m", "backend.modbus", "run", "--once", "--config", str(config)],
                                  cwd=ROOT, env=env, capture_output=True, text=True, timeout=90)
        finally:
            if pair is not None:
                pair.stop()
    assert done.returncode == 0, done.stdout + done.stderr
    for order in orders:
        flow, total, temp, status = NIVUS_VALUES[order]
        got = dict(live_server.query(
            "SELECT metric, value FROM telemetry_readings WHERE device_id = %s", f"nivus-{order.value}"))
        assert got["flow_rate"] == shortest_float32(flow), order
        assert got["totalizer"] == shortest_float32(total), order
        assert got["temperature"] == shortest_float32(temp), order
        assert got["status"] == status and got["modbus_ok"] == 1.0, order
