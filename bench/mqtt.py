"""Phase: MQTT ingest readings/s, publish N QoS 1 messages and time until all are stored.

A Mosquitto of its own (free port, persistence on), one subscriber process
(`python -m backend.mqtt`, every setting at its default but the broker and database), one
publisher that sends N messages of 4 readings each (the single-message phase's shape) to
`telemetry/<device>` at QoS 1 with up to 200 unacknowledged publishes. The clock runs from
the first publish until the last reading is in PostgreSQL (counted there), so the figure
includes the broker, the subscriber's in-order PUBACKs and the commit. The baseline in the
same run is the HTTP single-message rate of the service (phase 1): one message per request.

    python -m bench.mqtt [--quick]   # this phase alone, on a scratch database
"""

from __future__ import annotations

import argparse
import getpass
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import psycopg

from .server import ROOT, free_port

FULL_MESSAGES = 20_000
QUICK_MESSAGES = 2_000
DEVICES = 16
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def _wait(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise RuntimeError(f"bench mqtt: timed out waiting for {what}")
        time.sleep(0.05)


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def _count(url: str, devices: list[str]) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute("SELECT count(*) FROM telemetry_readings WHERE device_id = ANY(%s)",
                            (devices,)).fetchone()[0]


def mqtt_ingest(url: str, workdir: Path, quick: bool, http_single: dict[str, Any] | None = None) -> dict[str, Any]:
    if not os.path.exists(MOSQUITTO):
        return {"skipped": f"no mosquitto binary at {MOSQUITTO}"}
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    workdir.mkdir(parents=True, exist_ok=True)
    n = QUICK_MESSAGES if quick else FULL_MESSAGES
    port = free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(f"user {getpass.getuser()}\nallow_anonymous true\npersistence true\n"
                    f"persistence_location {workdir}/\nmax_queued_messages 1000000\nlistener {port} 127.0.0.1\n")
    broker = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = open(workdir / "subscriber.log", "w")  # noqa: SIM115 - closed below
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MQTT_") or k in ("MQTT_WORKERS", "MQTT_RECEIVE_MAXIMUM")}, "DATABASE_URL": url,
           "MQTT_BROKER_URL": f"mqtt://127.0.0.1:{port}", "MQTT_CLIENT_ID": "bench-ingest",
           "SPOOL_DIR": str(workdir / "spool"), "LOG_LEVEL": "INFO", "PYTHONUNBUFFERED": "1"}
    sub = None
    try:
        _wait(lambda: _listening(port), 20, "mosquitto")
        sub = subprocess.Popen([sys.executable, "-m", "backend.mqtt"], cwd=ROOT, env=env, stdout=log,
                               stderr=subprocess.STDOUT)
        _wait(lambda: "mqtt connected" in (workdir / "subscriber.log").read_text() or sub.poll() is not None,
              60, "the subscriber")
        tag = f"mq{int(time.time())}"
        devices = [f"{tag}d{k}" for k in range(DEVICES)]
        base = time.time() - 1800
        bodies = [(f"telemetry/{devices[i % DEVICES]}",
                   orjson.dumps({"ts": round(base + i / 1000, 3), "alt": 100 + i % 50, "bat_v": 12.1,
                                 "gps_lat": 52.1, "gps_lon": 4.3})) for i in range(n)]
        pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{tag}", protocol=mqtt.MQTTv5)
        pub.max_inflight_messages_set(200)
        pub.max_queued_messages_set(0)
        pub.connect("127.0.0.1", port)
        pub.loop_start()
        t0 = time.perf_counter()
        infos = [pub.publish(topic, body, qos=1) for topic, body in bodies]
        for info in infos:
            info.wait_for_publish(120)
        published_s = time.perf_counter() - t0
        _wait(lambda: _count(url, devices) >= 4 * n, 600, f"{4 * n} readings")
        stored_s = time.perf_counter() - t0
        pub.disconnect()
        pub.loop_stop()
        stored = _count(url, devices)
    finally:
        if sub is not None:
            sub.terminate()
            try:
                sub.wait(30)
            except subprocess.TimeoutExpired:
                sub.kill()
        broker.terminate()
        broker.wait(10)
        log.close()
    out: dict[str, Any] = {
        "messages": n, "readings": 4 * n, "stored_readings": stored, "published_s": round(published_s, 2),
        "stored_s": round(stored_s, 2), "messages_per_s": round(n / stored_s), "readings_per_s": round(4 * n / stored_s),
    }
    if http_single and http_single.get("rps"):
        out["http_single_messages_per_s"] = round(http_single["rps"])
        out["ratio_to_http_single"] = round(out["messages_per_s"] / http_single["rps"], 2)
    return out


def render(r: dict[str, Any]) -> list[str]:
    lines = ["", "### MQTT ingest (python -m backend.mqtt, one subscriber, QoS 1)", ""]
    if "skipped" in r:
        return lines + [f"Skipped: {r['skipped']}."]
    lines += [
        f"{r['messages']:,} messages of 4 readings each, published at QoS 1 (200 in flight) to a local"
        " Mosquitto; timed from the first publish until every reading was in PostgreSQL.", "",
        "| messages/s | readings/s | publish done | all stored | stored / sent | HTTP single-message req/s"
        " (same run) | MQTT / HTTP |", "|---|---|---|---|---|---|---|",
        f"| {r['messages_per_s']:,} | {r['readings_per_s']:,} | {r['published_s']:.1f} s | {r['stored_s']:.1f} s |"
        f" {r['stored_readings']:,} / {r['readings']:,} | {r.get('http_single_messages_per_s', '-')} |"
        f" {r.get('ratio_to_http_single', '-')} |",
    ]
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.mqtt")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    from .run import resolve_admin_url, scratch_database

    admin, _handle = resolve_admin_url(None)
    import tempfile

    with scratch_database(admin, f"bench_mqtt_{os.getpid()}") as url, tempfile.TemporaryDirectory() as tmp:
        r = mqtt_ingest(url, Path(tmp), args.quick)
    print("\n".join(render(r)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
