"""Two instances behind one nginx, sharing PostgreSQL (through PgBouncer in transaction mode),
Redis for the rate limits, and the stream's publish path (docs/scaling.md).

Each instance is a gunicorn with 2 workers and its own spool and stream process; nginx
balances over both as it would over `docker compose up --scale api=2`.
"""

from __future__ import annotations

import secrets

import pytest
import redis
import requests

from tests import pgbouncer
from tests.live.conftest import stream_env, wait_stream_up
from tests.live.sse import SSEReader
from tests.live_server import wait_for
from tests.loadgen import LoadGen, worker_statuses
from tests.test_nginx import start_nginx

REDIS_URL = "redis://127.0.0.1:6379/11"
pytestmark = pytest.mark.skipif(not pgbouncer.available(), reason="pgbouncer is not installed (.ci/run installs it)")


@pytest.fixture
def shared_redis() -> str:
    try:
        redis.Redis.from_url(REDIS_URL, socket_timeout=2).ping()
    except redis.RedisError as exc:
        pytest.skip(f"no Redis on 127.0.0.1:6379 ({exc})")
    return REDIS_URL


@pytest.fixture
def two_instances(make_live_server, database_url, shared_redis, tmp_path):
    bouncer = pgbouncer.PgBouncer(database_url, pool_size=6).start()
    servers = []
    admin = "test-admin-shared-" + secrets.token_hex(8)  # one operator key, as one .env would give both
    for _ in range(2):
        env = {**stream_env(STREAM_PUBLIC_URL="/api/stream"), "DATABASE_URL": bouncer.url_for(database_url),
               # LISTEN needs a session of its own: the stream process connects directly.
               "STREAM_DATABASE_URL": database_url, "REDIS_URL": shared_redis, "PROXY_FIX_HOPS": "1",
               "RATE_LIMIT_DEFAULT": "10/day", "RATE_LIMIT_IP": "100000/minute", "ADMIN_API_KEY": admin}
        servers.append(make_live_server(env=env, workers=2, threads=4))
        servers[-1].api_key = admin
    for server in servers:
        wait_stream_up(server)
    proc, port = start_nginx(tmp_path / "nginx", [s.port for s in servers],
                             [int(s.env["STREAM_PORT"]) for s in servers])
    yield servers, f"http://127.0.0.1:{port}", bouncer
    proc.terminate()
    proc.wait(10)
    for server in servers:
        server.stop(timeout=15)
    bouncer.destroy()


def written_by(server) -> int:
    return sum(st["written_total"] for st in worker_statuses(server, attempts=20).values())


def test_two_instances_behind_one_nginx(two_instances, database_url):
    (a, b), url, bouncer = two_instances
    # 1. every reading acknowledged by either instance is stored exactly once
    lg = LoadGen(url, a.headers(), threads=6, lines_per_post=20)
    lg.start()
    wait_for(lambda: lg.stats.ok >= 150, timeout=120)
    lg.stop()
    verdict = lg.wait_until_stored(database_url, 60)
    assert verdict.acked >= 3000 and verdict.lost == 0 and verdict.duplicates == 0, verdict.line()
    assert lg.stats.other == {}, lg.stats.summary()
    assert written_by(a) > 0 and written_by(b) > 0  # nginx spread the load over both
    print(f"\n[two-instances] {verdict.line()} {lg.stats.summary()}")

    # 2. one key's budget holds across both instances (counted in Redis)
    key = a.post("/api/keys", json={"name": "shared-budget", "scopes": ["ingest", "read"]}).json()["key"]
    codes = []
    for i in range(16):
        target = (a, b)[i % 2].url  # straight to each in turn, so both count
        codes.append(requests.get(target + "/api/devices", headers={"X-API-Key": key}, timeout=10).status_code)
    assert codes == [200] * 10 + [429] * 6, codes
    assert requests.get(url + "/api/devices", headers={"X-API-Key": key}, timeout=10).status_code == 429

    # 3. a subscriber of B's stream sees what A wrote (and nginx's stream sees both)
    token = requests.post(b.url + "/api/stream/token", headers={"X-API-Key": b.api_key}, timeout=10).json()
    direct = SSEReader(f"http://127.0.0.1:{b.env['STREAM_PORT']}/api/stream",
                       [("token", token["token"]), ("device_id", "across-instances")]).start()
    token = requests.post(url + "/api/stream/token", headers={"X-API-Key": a.api_key}, timeout=10).json()
    proxied = SSEReader(url + token["stream_url"], [("token", token["token"]), ("device_id", "across-instances")]
                        ).start()
    try:
        for i, server in enumerate((a, b, a)):
            r = requests.post(server.url + "/telemetry/parse", timeout=30,
                              data=f"device_id:across-instances,ts:{1_700_000_000 + i},seq:{i}",
                              headers=server.headers(**{"Content-Type": "text/plain"}))
            assert r.status_code == 200 and r.json()["durability"] == "committed", r.text
        for sub in (direct, proxied):
            wait_for(lambda sub=sub: len(sub.readings()) >= 3, timeout=30)
            assert sorted(e.data["value"] for e in sub.readings()) == [0.0, 1.0, 2.0]
    finally:
        direct.close()
        proxied.close()
    # all of it through the pooler, in transaction mode
    pools = [p for p in bouncer.show("POOLS") if p["pool_mode"] == "transaction" and p["database"] != "pgbouncer"]
    assert pools and max(p["sv_active"] + p["sv_idle"] + p["sv_used"] for p in pools) <= 6
