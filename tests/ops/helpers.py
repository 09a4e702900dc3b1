"""Shared by the ops tests: ingest spread over both workers of a live server."""

from __future__ import annotations

import itertools
from concurrent.futures import ThreadPoolExecutor

import requests

from tests.live_server import LiveServer, wait_for

_seq = itertools.count()


def post_readings(server: LiveServer, posts: int, per_post: int = 5, device: str = "obs") -> int:
    """`posts` raw-format posts on fresh connections from 8 threads; returns the readings sent."""

    def one(_i: int) -> None:
        n = next(_seq)
        body = "\n".join(f"device_id:{device}-{n % 7},temp:{n}.{j},ts:2026-01-01T00:{(n // 60) % 60:02d}:"
                         f"{n % 60:02d}.{j:03d}Z" for j in range(per_post))
        r = requests.post(server.url + "/telemetry", data=body, timeout=60,
                          headers=server.headers(**{"Content-Type": "text/plain", "Connection": "close",
                                                   "X-Device-Id": f"{device}-{n % 7}"}))
        assert r.status_code == 200, r.text
        assert r.json()["accepted"] == per_post, r.text

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(posts)))
    return posts * per_post


def ingest_on_both_workers(server: LiveServer, rounds: int = 30) -> int:
    """Post until each of the two workers has written some; returns the readings sent in all."""
    sent = 0
    for _ in range(rounds):
        sent += post_readings(server, 16)
        workers = server.get("/telemetry/batch/status").json()["workers"]
        if len(workers) >= 2 and all(w["written_total"] > 0 for w in workers):
            return sent
    raise AssertionError(f"one worker took every connection: {workers}")


def instance_written(server: LiveServer, expected: int) -> dict:
    return wait_for(lambda: (st := server.get("/telemetry/batch/status").json())["written_total"] == expected
                    and st, timeout=30)
