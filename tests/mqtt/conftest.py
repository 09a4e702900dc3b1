"""A real Mosquitto per test (own port, own persistence directory) and real subscriber processes.

Skips, saying why, only when the mosquitto binary is missing (.ci/run installs it).
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

ROOT = Path(__file__).resolve().parents[2]
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(cond: Callable[[], object], timeout: float = 60.0, what: str = "condition", every: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")


class Broker:
    def __init__(self, tmp: Path, mounts: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.mounts = {name: free_port() for name in (mounts or {})}
        # As root, mosquitto drops to user "mosquitto", which cannot write our temporary directory.
        lines = [f"user {getpass.getuser()}", "per_listener_settings false", "allow_anonymous true", "persistence true",
                 f"persistence_location {tmp}/", "autosave_interval 1",
                 # The broker queues what a stopped subscriber's session misses; the default 1000
                 # would drop messages of a long outage (docs/doors.md says the same for production).
                 "max_queued_messages 1000000", "max_inflight_messages 0",
                 f"listener {self.port} 127.0.0.1"]
        for name, port in self.mounts.items():
            lines += [f"listener {port} 127.0.0.1", f"mount_point {(mounts or {})[name]}"]
        self.conf = tmp / "mosquitto.conf"
        self.conf.write_text("\n".join(lines) + "\n")
        self.log = open(tmp / "mosquitto.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=self.log, stderr=subprocess.STDOUT)
        wait_for(self._listening, 20, "mosquitto to listen")

    def _listening(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
            return True
        except OSError:
            assert self.proc.poll() is None, f"mosquitto exited: {(self.conf.parent / 'mosquitto.log').read_text()}"
            return False

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


@pytest.fixture
def make_broker(tmp_path: Path) -> Iterator[Callable[..., Broker]]:
    if not os.path.exists(MOSQUITTO):
        pytest.skip(f"no mosquitto binary at {MOSQUITTO} (Debian package mosquitto; .ci/run installs it)")
    brokers: list[Broker] = []

    def factory(mounts: dict[str, str] | None = None) -> Broker:
        d = tmp_path / f"broker{len(brokers)}"
        d.mkdir()
        brokers.append(Broker(d, mounts))
        return brokers[-1]

    yield factory
    for b in brokers:
        b.stop()


@pytest.fixture
def broker(make_broker) -> Broker:
    return make_broker()


class SubscriberProcess:
    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.lines: list[str] = []
        self.proc: subprocess.Popen[str] | None = None
        self.starts = 0

    def start(self) -> SubscriberProcess:
        self.starts += 1
        mark = len(self.lines)
        self.proc = subprocess.Popen([sys.executable, "-m", "backend.mqtt"], cwd=ROOT, env=self.env, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        threading.Thread(target=self._read, args=(self.proc,), daemon=True).start()
        wait_for(lambda: any("mqtt connected" in ln for ln in self.lines[mark:]) or self._died(), 60,
                 "the subscriber to connect")
        assert self.proc.poll() is None, "subscriber exited:\n" + "".join(self.lines[-30:])
        return self

    def _died(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        with open(self.log_path, "a") as log:
            for line in proc.stdout:
                self.lines.append(line)
                log.write(line)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def logged(self, text: str) -> list[str]:
        return [ln for ln in self.lines if text in ln]


@pytest.fixture
def make_subscriber(database_url: str, tmp_path: Path) -> Iterator[Callable[..., SubscriberProcess]]:
    subs: list[SubscriberProcess] = []

    def factory(broker: Broker, client_id: str = "ingest-test-1", **env: str) -> SubscriberProcess:
        full = {k: v for k, v in os.environ.items() if not k.startswith(("MQTT_", "TELTONIKA_"))}
        full.update({"DATABASE_URL": database_url, "MQTT_BROKER_URL": broker.url, "MQTT_CLIENT_ID": client_id,
                     "SPOOL_DIR": str(tmp_path / "spool"), "FLUSH_INTERVAL": "0.05", "LOG_LEVEL": "INFO",
                     "RETRY_BASE_DELAY": "0.01", "RETRY_MAX_DELAY": "0.5", "PYTHONUNBUFFERED": "1"})
        full.update(env)
        sub = SubscriberProcess(full, tmp_path / f"subscriber-{client_id}.log")
        subs.append(sub)
        return sub.start()

    yield factory
    for s in subs:
        s.stop()


class Publisher:
    """A plain paho client publishing QoS 1 and waiting for each PUBACK from the broker."""

    def __init__(self, port: int, client_id: str = "test-publisher", username: str | None = None) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        if username:
            self.client.username_pw_set(username)
        self.client.max_inflight_messages_set(200)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def publish(self, topic: str, payload: str | bytes, qos: int = 1, wait: bool = True,
                user: dict[str, str] | None = None) -> mqtt.MQTTMessageInfo:
        props = None
        if user:  # MQTT 5 user properties (e.g. Idempotency-Key)
            props = Properties(PacketTypes.PUBLISH)
            props.UserProperty = list(user.items())
        info = self.client.publish(topic, payload, qos=qos, properties=props)
        if wait:
            info.wait_for_publish(30)
            assert info.is_published(), f"broker did not acknowledge the publish to {topic}"
        return info

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def make_publisher() -> Iterator[Callable[..., Publisher]]:
    pubs: list[Publisher] = []

    def factory(port: int, **kw) -> Publisher:
        pubs.append(Publisher(port, **kw))
        return pubs[-1]

    yield factory
    for p in pubs:
        p.close()
