"""ThingsBoard's own tb-mqtt-client publishing through a real Mosquitto into the subscriber.

tb-mqtt-client pins an older paho-mqtt, so it is installed with `pip install --target` into
a temporary directory (never into the project's environment) and run in its own process
with that directory first on its sys.path (tests/mqtt/tb_publisher.py). Skips, saying why,
when the package cannot be installed (no network, no index).
"""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from backend.fleet.auth.keys import create_key
from tests.mqtt.conftest import wait_for

HERE = Path(__file__).parent
T0 = 1764806400


@pytest.fixture(scope="session")
def tb_client_dir(tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("tb-mqtt-client")
    # mmh3 too: without it the package pip-installs it at import time into the running interpreter.
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-input", "--target", str(target),
                           "tb-mqtt-client", "mmh3"], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0 or not (target / "tb_device_mqtt.py").exists():
        pytest.skip(f"tb-mqtt-client could not be installed: {(proc.stderr or proc.stdout)[-300:]}")
    return target


def publish(tb_client_dir: Path, port: int, *args: str) -> str:
    proc = subprocess.run([sys.executable, str(HERE / "tb_publisher.py"), str(tb_client_dir), str(port), *args],
                          capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin",
                                                                            "PIP_NO_INDEX": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "published [0, 0, 0]" in proc.stdout, proc.stdout + proc.stderr  # every PUBACK was a success
    return proc.stdout


def rows(db) -> list[tuple]:
    return db.execute("SELECT device_id, metric, ts, value, value_text FROM telemetry_readings"
                      " ORDER BY device_id, ts, metric").fetchall()


def at(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


def test_tb_gateway_client(db, broker, make_subscriber, tb_client_dir):
    make_subscriber(broker)
    publish(tb_client_dir, broker.port, "gateway")
    wait_for(lambda: len(rows(db)) >= 4, 60, "4 readings")
    assert rows(db) == [("Pump_A", "flow", at(T0), 1.25, None), ("Pump_A", "running", at(T0), 1.0, None),
                        ("Pump_B", "flow", at(T0 + 0.5), 0.5, None), ("Pump_B", "mode", at(T0 + 0.5), None, "auto")]


def test_tb_device_client_with_its_access_token(db, make_broker, make_subscriber, tb_client_dir):
    info, token = create_key(db, "tb device", "ingest", ["boiler-9"])
    broker = make_broker(mounts={"tb": f"tb/{info.id}/"})
    make_subscriber(broker)
    publish(tb_client_dir, broker.mounts["tb"], "device", token)
    # Messages are handled side by side: the attributes may be stored before the telemetry.
    wait_for(lambda: db.execute("SELECT metadata->>'firmware' FROM devices WHERE device_id = 'boiler-9'")
             .fetchone() == ("2.0.1",), 60, "the attribute")
    wait_for(lambda: rows(db), 60, "the telemetry")
    assert rows(db) == [("boiler-9", "temp", at(T0), 71.25, None)]
