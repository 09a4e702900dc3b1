"""/telemetry/batch/status answers for the whole instance (every gunicorn worker), not one worker."""

from __future__ import annotations

import os
import signal

import pytest

from tests.live_server import wait_for
from tests.ops.helpers import ingest_on_both_workers, instance_written, post_readings


def _worker_views(server, workers: int) -> dict[int, dict]:
    seen: dict[int, dict] = {}

    def all_seen() -> bool:
        st = server.get("/telemetry/batch/status?scope=worker", headers={"Connection": "close"}).json()
        seen[st["worker_pid"]] = st
        return len(seen) >= workers

    wait_for(all_seen, timeout=60, interval=0.05)
    return seen


@pytest.mark.timeout(300)
def test_status_adds_up_both_workers_whichever_answers(make_live_server):
    server = make_live_server(workers=2)
    sent = ingest_on_both_workers(server)
    st = instance_written(server, sent)
    assert st["scope"] == "instance" and st["workers_live"] == 2
    per_worker = {w["pid"]: w["written_total"] for w in st["workers"]}
    assert len(per_worker) == 2 and all(n > 0 for n in per_worker.values()), st["workers"]
    assert sum(per_worker.values()) == sent
    # Each worker's own view (scope=worker) holds only its share; both answer the same instance total.
    views = _worker_views(server, 2)
    assert {pid: v["written_total"] for pid, v in views.items()} == per_worker
    assert all(v["written_total"] < sent for v in views.values())
    # Whichever worker answers gives the instance's total (the other's figures are as of its last
    # publication, at most ~0.5 s after its last flush: so wait until each answered it).
    answered: set[int] = set()

    def both_answer_the_total() -> bool:
        again = server.get("/telemetry/batch/status", headers={"Connection": "close"}).json()
        assert again["written_total"] <= sent and again["workers_live"] == 2
        assert sum(again["flushes_by_method"].values()) == again["flushes_total"] >= 2
        if again["written_total"] == sent:
            answered.add(again["worker_pid"])
        return answered == set(per_worker)

    wait_for(both_answer_the_total, timeout=60, interval=0.05)


@pytest.mark.timeout(300)
def test_totals_survive_a_killed_worker_and_levels_count_only_live_ones(make_live_server):
    server = make_live_server(workers=2)
    sent = ingest_on_both_workers(server)
    st = instance_written(server, sent)
    victim = st["workers"][0]["pid"]
    # Its published figures must hold its last flush before it dies: a worker's file lags its
    # flushes by up to 0.5 s, so a SIGKILL right after one would lose it from this status (not
    # from /metrics, whose counters are written as they count). The other worker's answer shows it.
    wait_for(lambda: (a := server.get("/telemetry/batch/status", headers={"Connection": "close"}).json())
             ["worker_pid"] != victim and a["written_total"] == sent, timeout=60, interval=0.05)
    os.kill(victim, signal.SIGKILL)  # gunicorn's master starts a new worker; child_exit marks it dead
    st = wait_for(lambda: (s := server.get("/telemetry/batch/status").json())["workers_live"] == 2
                  and victim not in [w["pid"] for w in s["workers"] if w["live"]] and len(s["workers"]) == 3
                  and s["written_total"] == sent and s,  # the dead worker's totals still count
                  timeout=60, interval=0.2)
    assert [w["live"] for w in st["workers"] if w["pid"] == victim] == [False]
    more = post_readings(server, 8)
    instance_written(server, sent + more)
    metrics = server.get("/metrics").text
    assert "telemetry_workers 2.0" in metrics  # live gauges of the dead worker no longer count
