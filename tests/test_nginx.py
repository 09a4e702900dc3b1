"""The project's nginx (docker/nginx.conf + docker/templates/) in front of a live gunicorn, and
docker-compose.yml (issue 10, and issue 11 behind nginx).

nginx runs for real, as a child process on a free port with a temporary prefix; the template is
rendered the way the nginx image does it (envsubst), with docker-compose.yml's values. docker
compose itself cannot run here (no engine), so the compose file is checked as YAML, and with
`docker compose config` where the compose plugin exists.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

import psutil
import pytest
import requests

from tests.live_server import ROOT, free_port, wait_for
from tests.slowloris import SlowClients, keep_posting, p99

yaml = pytest.importorskip("yaml", reason="PyYAML (requirements-dev.txt) reads docker-compose.yml")

COMPOSE = ROOT / "docker-compose.yml"
VAR = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")
NGINX_TIMEOUT_S = 3


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def compose_env(service: str) -> dict[str, str]:
    """A service's environment as compose would set it with no .env and nothing exported."""
    env = compose()["services"][service].get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: VAR.sub(lambda m: m.group(2) or "", str(v)) for k, v in env.items()}


def start_nginx(tmp: Path, upstream_port: int | list[int], stream_port: int | list[int] | None = None,
                **overrides: str) -> tuple[subprocess.Popen, int]:
    """nginx with the project's configuration in front of one or several instances.

    Several upstream ports stand for what `docker compose up --scale api=N` gives nginx: one
    name that resolves to every replica, i.e. one `server` line per instance.
    """
    if shutil.which("nginx") is None and not os.path.exists("/usr/sbin/nginx"):
        pytest.skip("nginx is not installed (apt-get install -y nginx; .ci/run does it)")
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "conf.d").mkdir(exist_ok=True)
    api_ports = upstream_port if isinstance(upstream_port, list) else [upstream_port]
    stream_ports = stream_port if isinstance(stream_port, list) else [stream_port or api_ports[0]]
    values = {**compose_env("nginx"), "API_UPSTREAM": f"127.0.0.1:{api_ports[0]}",
              "STREAM_UPSTREAM": f"127.0.0.1:{stream_ports[0]}", **overrides}
    conf = (ROOT / "docker" / "nginx.conf").read_text()
    port = free_port()
    assert conf.count("listen 80;") == 1
    (tmp / "nginx.conf").write_text(conf.replace("listen 80;", f"listen 127.0.0.1:{port};"))
    for template in (ROOT / "docker" / "templates").glob("*.template"):
        text = VAR.sub(lambda m: values[m.group(1)], template.read_text())  # KeyError: compose lacks it
        for name, ports in (("API_UPSTREAM", api_ports), ("STREAM_UPSTREAM", stream_ports)):
            first = f"server {values[name]};"
            assert first in text, (name, text)
            text = text.replace(first, " ".join(f"server 127.0.0.1:{p};" for p in ports))
        # Only for this test: paths a non-root nginx can write, and no shared access log.
        text += "".join(f"\n{kind}_temp_path {tmp}/{kind};" for kind in ("client_body", "proxy", "fastcgi",
                                                                         "uwsgi", "scgi"))
        text += f"\naccess_log {tmp}/access.log;\n"
        (tmp / "conf.d" / template.name.removesuffix(".template")).write_text(text)
    # As root, workers would switch to nobody, who cannot enter pytest's private temp dirs.
    user = "user root; " if os.geteuid() == 0 else ""
    args = [shutil.which("nginx") or "/usr/sbin/nginx", "-p", str(tmp), "-c", str(tmp / "nginx.conf"),
            "-g", f"daemon off; pid {tmp}/nginx.pid; error_log stderr; {user}"]
    check = subprocess.run([*args[:-2], "-t", *args[-2:]], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    log = open(tmp / "error.log", "ab")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)

    def ready() -> bool:
        assert proc.poll() is None, (tmp / "error.log").read_text()
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            return False

    wait_for(ready, timeout=15)
    return proc, port


@pytest.fixture
def behind_nginx(make_live_server, tmp_path):
    """make(env=..., workers=..., threads=...) -> (server, nginx base URL); all stopped at teardown."""
    procs: list[subprocess.Popen] = []

    def make(env: dict[str, str] | None = None, nginx: dict[str, str] | None = None, **kw) -> tuple:
        # The api's settings as docker-compose.yml gives them (PROXY_FIX_HOPS above all), with
        # this machine's database, Redis, ports and directories instead of the containers'. Empty
        # values mean the default, as they do to the service.
        # Workers and threads are each test's own (make's workers=/threads=): compose's
        # WEB_CONCURRENCY=0 ("as many as the cores") would override them.
        local = {"DATABASE_URL", "REDIS_URL", "HOST", "PORT", "STREAM_HOST", "STREAM_PORT", "DATA_DIR",
                 "WEB_CONCURRENCY", "GUNICORN_THREADS"}
        api_env = {k: v for k, v in compose_env("api").items() if v and k not in local}
        server = make_live_server(env={**api_env, **(env or {})}, **kw)
        stream_port = int(server.env.get("STREAM_PORT") or server.port)
        proc, port = start_nginx(tmp_path / f"nginx{len(procs)}", server.port, stream_port, **(nginx or {}))
        procs.append(proc)
        return server, f"http://127.0.0.1:{port}"

    yield make
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_ingest_and_query_through_nginx(behind_nginx):
    server, url = behind_nginx()
    auth = server.headers(**{"X-Device-Id": "via-nginx", "Content-Type": "text/plain"})
    r = requests.post(url + "/telemetry/parse", data="alt:150,bat_v:12.4", headers=auth, timeout=10)
    assert r.status_code == 200 and r.json()["accepted"] == 2, r.text
    r = requests.get(url + "/telemetry/query?device_id=via-nginx", headers=server.headers(), timeout=10)
    assert r.status_code == 200, r.text
    assert sorted(row["metric"] for row in r.json()["data"]) == ["alt", "bat_v"]
    assert requests.get(url + "/health", timeout=10).status_code == 200


def get_from(base: str, source: str, path: str, headers: dict[str, str] | None = None) -> int:
    """GET from a chosen local source address: nginx sees a different client per address."""
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10, source_address=(source, 0))
    try:
        conn.request("GET", path, headers=headers or {})
        return conn.getresponse().status
    finally:
        conn.close()


def test_each_client_address_has_its_own_budget_and_health_none(behind_nginx):
    # One worker: without REDIS_URL each worker counts alone, and nginx's keep-alive
    # connections land on either worker, so two workers could each let 3 through.
    # Per hour: the windows are fixed, and a minute's boundary between two requests of a slow
    # run reset the count (CI saw 401 where 429 was due).
    server, url = behind_nginx(env={"RATE_LIMIT_IP": "3/hour"}, workers=1)
    bad_key = {"X-API-Key": "tk_wrong"}
    assert [get_from(url, "127.0.0.1", "/health") for _ in range(5)] == [200] * 5  # a prober: never limited
    assert [get_from(url, "127.0.0.1", "/api/devices", bad_key) for _ in range(4)] == [401, 401, 401, 429]
    # other clients behind the same nginx still have their whole budgets, each its own
    assert [get_from(url, "127.0.0.2", "/api/devices", bad_key) for _ in range(4)] == [401, 401, 401, 429]
    assert [get_from(url, "127.0.0.3", "/api/devices", bad_key) for _ in range(3)] == [401, 401, 401]
    # naming another address does not escape the budget: nginx appends the real one, the app takes that
    spoofed = {**bad_key, "X-Forwarded-For": "10.1.2.3"}
    assert get_from(url, "127.0.0.1", "/api/devices", spoofed) == 429
    assert get_from(url, "127.0.0.1", "/health") == 200


def test_query_answers_are_compressed_and_ingest_answers_pass(behind_nginx):
    server, url = behind_nginx()
    body = "\n".join(f"device_id:gz,seq:{i},ts:2026-01-01T00:00:{i:02d}Z" for i in range(60))
    r = requests.post(url + "/telemetry", data=body, headers=server.headers(**{"Content-Type": "text/plain"}),
                      timeout=10)
    assert r.status_code == 200 and r.json()["accepted"] == 60, r.text
    r = requests.get(url + "/telemetry/query?device_id=gz&limit=100&start=2026-01-01T00:00:00Z",
                     headers=server.headers(**{"Accept-Encoding": "gzip"}), timeout=10, stream=True)
    assert r.status_code == 200 and r.headers.get("Content-Encoding") == "gzip", r.headers
    raw = r.raw.read(decode_content=False)
    import gzip

    plain = gzip.decompress(raw)
    assert json.loads(plain)["count"] == 60 and len(raw) * 3 < len(plain), (len(raw), len(plain))
    # without Accept-Encoding: plain JSON
    r = requests.get(url + "/telemetry/query?device_id=gz&limit=100&start=2026-01-01T00:00:00Z",
                     headers=server.headers(**{"Accept-Encoding": "identity"}), timeout=10)
    assert "Content-Encoding" not in r.headers and r.json()["count"] == 60


def test_body_over_max_body_bytes_gets_the_apps_json_413(behind_nginx):
    server, url = behind_nginx()
    auth = server.headers(**{"X-Device-Id": "big", "Content-Type": "text/plain"})
    r = requests.post(url + "/telemetry/parse", data=b"x" * (10 * 1024 * 1024 + 1), headers=auth, timeout=60)
    assert r.status_code == 413
    assert r.json()["error"] == "body of 10485761 bytes is over the 10485760-byte limit"  # the app's own
    # beyond nginx's own limit: still JSON, and it says which limit
    r = requests.post(url + "/telemetry/parse", data=b"x" * (12 * 1024 * 1024), headers=auth, timeout=60)
    assert r.status_code == 413 and "client_max_body_size" in r.json()["error"]


def stalls(url: str) -> bool:
    try:
        requests.get(url, timeout=2)
    except requests.Timeout:
        return True
    return False


def test_slow_clients_never_reach_gunicorn(behind_nginx):
    # gunicorn's stock gthread with 2 threads: two slow sockets straight at it stall it ...
    server, url = behind_nginx(env={"GUNICORN_WORKER_CLASS": "gthread"}, workers=1, threads=2,
                               nginx={"NGINX_CLIENT_HEADER_TIMEOUT": f"{NGINX_TIMEOUT_S}s",
                                      "NGINX_CLIENT_BODY_TIMEOUT": f"{NGINX_TIMEOUT_S}s"})
    assert len(psutil.Process(server.proc.pid).children()) == 1  # one worker: nowhere else to go
    with SlowClients("127.0.0.1", server.port, headers=2, bodies=0):
        assert stalls(server.url + "/health"), "gunicorn answered beside two slow sockets"
    # ... but behind nginx 64 + 64 of them change nothing, and nginx cuts them off
    with SlowClients("127.0.0.1", int(url.rsplit(":", 1)[1]), headers=64, bodies=64, trickle=None) as slow:
        latencies = keep_posting(url, server.api_key, duration=NGINX_TIMEOUT_S - 1.0, interval=0.05)
        open_while_posting = slow.open_count()
        wait_for(lambda: slow.open_count() == 0, timeout=NGINX_TIMEOUT_S + 10)
    assert p99(latencies) < 1.0, f"p99 {p99(latencies):.2f} s"
    assert open_while_posting == 128
    assert all(s.closed - s.opened >= NGINX_TIMEOUT_S - 0.5 for s in slow.sockets)
    assert server.query("SELECT count(*) FROM telemetry_readings WHERE device_id = 'normal-client'")[0][0] \
        == len(latencies)


def test_compose_reaches_the_api_through_its_nginx_only():
    # tests/test_compose.py runs compose itself on the file
    spec = compose()
    api, nginx = spec["services"]["api"], spec["services"]["nginx"]
    for name, _default in VAR.findall(COMPOSE.read_text()):
        assert f"${{{name}:-" in COMPOSE.read_text(), f"${{{name}}} has no default"
    env = compose_env("api")
    assert env["PROXY_FIX_HOPS"] == "1"
    assert "ports" not in api, "the api must be reached through nginx only (X-Forwarded-For is trusted)"
    mounts = {v.split(":")[1]: v.split(":")[0] for v in nginx["volumes"]}
    assert mounts["/etc/nginx/nginx.conf"] == "./docker/nginx.conf"
    assert mounts["/etc/nginx/templates"] == "./docker/templates"
    needed = {m for t in (ROOT / "docker" / "templates").glob("*.template") for m, _ in VAR.findall(t.read_text())}
    assert needed <= set(compose_env("nginx")), needed - set(compose_env("nginx"))
    assert compose_env("nginx")["API_UPSTREAM"] == "api:5000"


def test_a_stream_event_arrives_through_nginx(behind_nginx):
    from tests.live.conftest import stream_env, wait_stream_up
    from tests.live.sse import SSEReader

    # As compose runs it: tokens name nginx's path, nginx routes it to the stream process.
    server, url = behind_nginx(env=stream_env(STREAM_PUBLIC_URL="/api/stream"))
    wait_stream_up(server)
    r = requests.post(url + "/api/stream/token", headers={"X-API-Key": server.api_key}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["stream_url"] == "/api/stream"
    sub = SSEReader(url + r.json()["stream_url"], [("token", r.json()["token"]), ("device_id", "via-nginx-live")],
                    {"Accept-Encoding": "gzip"}).start()
    try:
        r = requests.post(url + "/telemetry/parse", data="device_id:via-nginx-live,ts:1700000000,temp:21.5",
                          headers=server.headers(**{"Content-Type": "text/plain"}), timeout=30)
        assert r.status_code == 200, r.text
        wait_for(lambda: sub.readings(), timeout=30)
        (event,) = sub.readings()
        assert event.data["value"] == 21.5 and event.data["metric"] == "temp"
        # heartbeats flow too: the stream is not held in a buffer (or compressed)
        wait_for(lambda: sub.comments >= 2, timeout=30)
    finally:
        sub.close()


def nginx_block(text: str, opener: str) -> str:
    """The body of the first block that starts with `opener` (braces balanced)."""
    start = text.index(opener)
    depth, i = 0, text.index("{", start)
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1:j]
    raise AssertionError(f"unbalanced block {opener}")


def test_the_configuration_keeps_its_production_promises():
    conf = (ROOT / "docker" / "nginx.conf").read_text()
    stream = nginx_block(conf, "location /api/stream {")
    assert "proxy_pass http://telemetry_stream;" in stream
    assert "proxy_buffering off;" in stream and "gzip off;" in stream
    assert re.search(r"proxy_read_timeout (\d+)h;", stream) and "proxy_http_version 1.1;" in stream
    assert "gzip on;" in conf and "application/json" in nginx_block(conf, "http {").split("gzip_types", 1)[1]
    # the app's 413 passes: nginx's own limit is above the app's default MAX_BODY_BYTES
    from backend.config import Config

    limit = compose_env("nginx")["NGINX_CLIENT_MAX_BODY_SIZE"]
    assert limit.endswith("m") and int(limit[:-1]) * 2**20 > Config().max_body_bytes
    assert "error_page 413 @too_large;" in conf  # and beyond it, JSON too
    template = (ROOT / "docker" / "templates" / "telemetry.conf.template").read_text()
    assert "client_header_timeout ${NGINX_CLIENT_HEADER_TIMEOUT};" in template
    assert "client_body_timeout ${NGINX_CLIENT_BODY_TIMEOUT};" in template
    assert "server ${API_UPSTREAM};" in template and "server ${STREAM_UPSTREAM};" in template
