"""Supabase as a user of seed 001 meets it: an .env with SUPABASE_URL and the service-role key.

Without DATABASE_URL the service must refuse to start and say what to set and where to find it
(never write to an embedded database while /health claims Supabase); with it, /health names the
database truthfully. A Supabase host is simulated with libpq's `hostaddr`: the URL names
db.<ref>.supabase.co (what the service sees and reports) while the connection goes to this
machine's PostgreSQL.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import psycopg
import pytest
import requests

from backend.config import Config, ConfigError
from tests import pgbouncer
from tests.live_server import ROOT, LiveServer

SEED_ENV = {"SUPABASE_URL": "https://abcdefghijklmnopqrst.supabase.co",
            "SUPABASE_SERVICE_ROLE_KEY": "eyJhbGciOiJIUzI1NiJ9.seed.key"}
ADVICE = ("DATABASE_URL", "Connect", "Connection string", "6543", "5432",
          "postgres.abcdefghijklmnopqrst", "db.abcdefghijklmnopqrst.supabase.co", "not\n SUPABASE_SERVICE_ROLE_KEY")


def assert_advice(text: str) -> None:
    flat = " ".join(text.split())
    for needle in ADVICE:
        assert " ".join(needle.split()) in flat, (needle, text)


def test_config_refuses_supabase_url_without_database_url():
    with pytest.raises(ConfigError) as exc:
        Config.from_env(SEED_ENV)
    assert str(exc.value).startswith("SUPABASE_URL is set but DATABASE_URL is not")
    assert_advice(str(exc.value))
    assert Config.from_env({**SEED_ENV, "DATABASE_URL": "postgresql://u@h/db"}).supabase_url == SEED_ENV["SUPABASE_URL"]


def clean_env(tmp_path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "SUPABASE_", "GUNICORN_", "PYTEST_"))}
    return {**env, "DATA_DIR": str(tmp_path / "data"), "SPOOL_DIR": str(tmp_path / "spool")}


def test_serve_and_gunicorn_refuse_to_start_with_only_the_seeds_supabase_settings(tmp_path):
    # the seed user's .env, in the directory the service starts from
    (tmp_path / ".env").write_text("".join(f"{k}={v}\n" for k, v in SEED_ENV.items()))
    out = subprocess.run([sys.executable, "-m", "backend", "serve"], cwd=tmp_path, timeout=60,
                         env={**clean_env(tmp_path), "PYTHONPATH": str(ROOT)}, capture_output=True, text=True)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "configuration error: SUPABASE_URL is set but DATABASE_URL is not" in out.stderr
    assert_advice(out.stderr)
    assert not (tmp_path / "data" / "pg").exists()  # no embedded database was started
    # gunicorn started directly (as a container or systemd unit may) refuses as well
    server = LiveServer("", tmp_path / "g", env={**SEED_ENV, "DATABASE_URL": ""}, workers=1)
    server.env.pop("DATABASE_URL")
    with pytest.raises(RuntimeError) as exc:
        server.start(wait=60)
    assert "SUPABASE_URL is set but DATABASE_URL is not" in str(exc.value)
    out = subprocess.run([sys.executable, "-m", "backend", "supabase", "check"], cwd=tmp_path, timeout=60,
                         env={**clean_env(tmp_path), "PYTHONPATH": str(ROOT)}, capture_output=True, text=True)
    assert out.returncode == 2 and "DATABASE_URL" in out.stderr, out.stderr


def supabase_looking(database_url: str, host: str, port: int | None = None) -> str:
    """`database_url` as if it were on `host`: libpq connects to hostaddr, the service sees host."""
    info = psycopg.conninfo.conninfo_to_dict(database_url)
    info.update(host=host, hostaddr="127.0.0.1", sslmode="disable")
    if port:
        info["port"] = str(port)
    return psycopg.conninfo.make_conninfo(**info)


def test_health_names_the_database_it_writes_to(make_live_server, database_url):
    direct = make_live_server(env={**SEED_ENV, "DATABASE_URL": supabase_looking(
        database_url, "db.abcdefghijklmnopqrst.supabase.co")}, workers=1)
    plain = make_live_server(env={**SEED_ENV}, workers=1)  # SUPABASE_URL set, but writes to this PostgreSQL
    for server, kind, supabase in ((direct, "supabase", True), (plain, "postgresql", False)):
        body = requests.get(server.url + "/health", timeout=10).json()
        assert body["database"] == {"kind": kind, "via": "direct", "connected": True}, body
        assert body["supabase_connected"] is supabase and body["batch_status"]["supabase_healthy"] is supabase
        details = server.get("/health?details=1").json()["database"]
        assert details["name"].split(":")[0] == ("db.abcdefghijklmnopqrst.supabase.co" if supabase else "127.0.0.1")
    # and what it claims is where the readings are
    r = direct.post("/telemetry/parse", data="alt:1", headers={"X-Device-Id": "supa", "Content-Type": "text/plain"})
    assert r.status_code == 200, r.text
    assert direct.query("SELECT count(*) FROM telemetry_readings WHERE device_id = 'supa'") == [(1,)]


def test_health_names_supabases_transaction_pooler(make_live_server, database_url):
    if not pgbouncer.available():
        pytest.skip("pgbouncer is not installed (.ci/run installs it)")
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", 6543))
        except OSError:
            pytest.skip("port 6543 is taken here: the pooler's port cannot be simulated")
    pool = pgbouncer.PgBouncer(database_url, port=6543).start()
    try:
        url = supabase_looking(database_url, "aws-0-eu-central-1.pooler.supabase.com", 6543)
        server = make_live_server(env={**SEED_ENV, "DATABASE_URL": url}, workers=1)
        body = requests.get(server.url + "/health", timeout=10).json()
        assert body["database"] == {"kind": "supabase", "via": "transaction pooler", "connected": True}, body
        assert body["supabase_connected"] is True
    finally:
        pool.destroy()
