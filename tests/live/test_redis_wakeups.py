"""With REDIS_URL: the commit publisher wakes stream processes over Redis pub/sub."""

from __future__ import annotations

import socket

import pytest
import redis

from backend.ingest.sinks import WriteResult
from backend.live.publisher import CHANNEL, CommitPublisher
from tests.live.sse import open_stream
from tests.live_server import wait_for

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
def redis_url() -> str:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=0.5):
            pass
    except OSError as exc:
        pytest.skip(f"no Redis answering on 127.0.0.1:6379 ({exc})")
    return REDIS_URL


def test_publisher_sends_a_wakeup_per_commit_with_new_readings(redis_url, database_url) -> None:
    client = redis.Redis.from_url(redis_url)
    pubsub = client.pubsub()
    pubsub.subscribe(CHANNEL)
    assert pubsub.get_message(timeout=5)["type"] == "subscribe"
    publisher = CommitPublisher(database_url, redis_url)
    publisher.start()
    try:
        publisher([], WriteResult(inserted=0))  # only duplicates: nothing new to tell
        publisher([], WriteResult(inserted=3))
        msg = pubsub.get_message(timeout=10)
        assert msg is not None and msg["type"] == "message" and msg["channel"] == CHANNEL.encode()
        # The count goes up after the publish returns, so the message can arrive first (CI saw 0).
        wait_for(lambda: publisher.published >= 1, timeout=5)
        assert publisher.published == 1  # and none for the call that stored nothing new
    finally:
        publisher.close()
        pubsub.close()


def test_stream_works_with_redis_configured(make_server, redis_url) -> None:
    server = make_server("redis", REDIS_URL=redis_url)
    sub = open_stream(server, ("device_id", "redis-1"))
    try:
        r = server.post("/telemetry/parse", data="device_id:redis-1,ts:1700000000,t:1",
                        headers={"Content-Type": "text/plain"})
        assert r.status_code == 200, r.text
        wait_for(lambda: sub.readings(), timeout=30)
        assert [e.data["value"] for e in sub.readings()] == [1.0]
    finally:
        sub.close()
