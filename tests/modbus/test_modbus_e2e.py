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
ROOT = Path(__file__).resolve().parents[2]


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
    from backend.modbus.forwarder import Forwarder
    from backend.modbus.queue import DiskQueue

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
    from tests.modbus.test_modbus_poller import NIVUS_VALUES, SocatPair

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


def _doc_try_it_blocks() -> list[str]:
    """The sh blocks of docs/modbus.md "Try it without hardware", in order."""
    text = (ROOT / "docs" / "modbus.md").read_text()
    section = text.split("\n## Try it without hardware\n", 1)[1].split("\n## ", 1)[0]
    return [part.split("```", 1)[0] for part in section.split("```sh\n")[1:]]


def _heredocs(block: str) -> list[str]:
    """The bodies of the `cat >(>) /tmp/try.toml <<'EOF'` here-documents of a block."""
    return [part.split("\nEOF\n", 1)[0] for part in block.split("/tmp/try.toml <<'EOF'\n")[1:]]


def _modbus_runs(block: str) -> list[list[str]]:
    return [line.split("#", 1)[0].split()[3:] for line in block.splitlines()
            if line.startswith("python -m backend.modbus run ")]


def test_docs_try_it_without_hardware_reaches_a_local_service(live_server, tmp_path: Path):
    """The doc's own config and commands: printed with --stdout (no key needed, even with
    the [api] block there), then sent to a running service and found in PostgreSQL."""
    blocks = _doc_try_it_blocks()
    assert len(blocks) >= 2, "the doc shows no step that sends to a local service"
    base, = _heredocs(blocks[0])
    api_part, = _heredocs(blocks[1])
    assert "[api]" in api_part
    modbus_port = free_port()
    toml = (base + "\n" + api_part).replace("port = 5020", f"port = {modbus_port}")
    toml = toml.replace("http://127.0.0.1:5000", live_server.url)
    toml = toml.replace("/tmp/try-queue.sqlite3", str(tmp_path / "try-queue.sqlite3"))
    config = tmp_path / "try.toml"
    config.write_text(toml)
    (stdout_run,), (send_run,) = _modbus_runs(blocks[0]), _modbus_runs(blocks[1])
    assert "--stdout" in stdout_run and "--stdout" not in send_run

    def run(argv: list[str], key: str | None) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if k != "FLUXIO_API_KEY"}
        env["PYTHONPATH"] = str(ROOT)
        if key is not None:
            env["FLUXIO_API_KEY"] = key
        argv = [str(config) if a == "/tmp/try.toml" else a for a in argv]
        return subprocess.run([sys.executable, "-m", "backend.modbus", *argv], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=60)

    sim = SimulatedDevice(1)
    sim.set_nivus(7.25, 1000.5, 11.0, 0, order=WordOrder.CDAB)  # the doc's simulator is CDAB
    with SimServer([sim], port=modbus_port):
        printed = run(stdout_run, key=None)
        assert printed.returncode == 0, printed.stderr
        assert [json.loads(line)["flow_rate"] for line in printed.stdout.splitlines()] == [7.25]
        sent = run(send_run, key=live_server.api_key)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    rows = live_server.query(
        "SELECT value FROM telemetry_readings WHERE device_id = 'nivus-sim' AND metric = 'flow_rate'")
    assert rows == [(7.25,)]
