"""SIGKILL under QoS 1 load loses nothing and duplicates nothing; shared subscriptions split the load."""

from __future__ import annotations

import json
import random
import re
import threading

from tests.mqtt.conftest import wait_for

T0 = 1764806400
DEVICES = 5


def count(db) -> int:
    return db.execute("SELECT count(*) FROM telemetry_readings WHERE metric = 'seq'").fetchone()[0]


def check_exactly_once(db, n: int) -> None:
    """Every published payload (device, ts, seq) is one row, with its own value."""
    rows = db.execute("SELECT device_id, extract(epoch FROM ts)::bigint, value, count(*) OVER"
                      " (PARTITION BY device_id, ts) FROM telemetry_readings WHERE metric = 'seq'").fetchall()
    assert len(rows) == n
    assert all(c == 1 for *_, c in rows), "a payload was stored twice"
    assert sorted(int(v) for _, _, v, _ in rows) == list(range(n))
    assert all(dev == f"load-{int(v) % DEVICES}" and ts == T0 + int(v) for dev, ts, v, _ in rows)


def publish_all(pub, n: int, done: threading.Event) -> None:
    infos = []
    for i in range(n):
        body = json.dumps({"ts": T0 + i, "seq": i})
        infos.append(pub.publish(f"telemetry/load-{i % DEVICES}", body, wait=False))
        if len(infos) >= 100:  # keep the publisher's window bounded; the broker acknowledged all before
            for info in infos:
                info.wait_for_publish(60)
            infos.clear()
    for info in infos:
        info.wait_for_publish(60)
    done.set()


def test_sigkill_ten_times_under_load_stores_every_message_exactly_once(db, broker, make_subscriber,
                                                                        make_publisher):
    n = 6000
    sub = make_subscriber(broker, MQTT_RECEIVE_MAXIMUM="200", FLUSH_LINGER="0.005")
    pub = make_publisher(broker.port)
    published = threading.Event()
    threading.Thread(target=publish_all, args=(pub, n, published), daemon=True).start()
    rng = random.Random(15)
    kills = 0
    while kills < 10:
        seen = count(db)
        # Kill in the middle of work: only once this life of the subscriber has stored something.
        wait_for(lambda s=seen: count(db) > s + 20 or count(db) == n, 120, "progress before a kill")
        threading.Event().wait(rng.uniform(0, 0.15))
        sub.kill()
        kills += 1
        sub.start()
    assert sub.starts == 11
    wait_for(published.is_set, 300, "the broker to acknowledge every publish")
    wait_for(lambda: count(db) >= n, 300, f"{n} readings", every=0.2)
    threading.Event().wait(1.0)  # redeliveries still in flight would show up as duplicates now
    check_exactly_once(db, n)
    # The kills hit work in flight: sessions survived and the broker redelivered unacknowledged messages.
    assert len(sub.logged("session present: True")) == 10
    assert sub.logged("redelivers messages not acknowledged")


def test_shared_subscription_splits_the_load(db, broker, make_subscriber, make_publisher):
    n = 600
    a = make_subscriber(broker, client_id="ingest-a")
    b = make_subscriber(broker, client_id="ingest-b")
    pub = make_publisher(broker.port)
    done = threading.Event()
    publish_all(pub, n, done)
    wait_for(lambda: count(db) == n, 120, f"{n} readings")
    a.stop()
    b.stop()
    handled = []
    for sub in (a, b):
        line = sub.logged("handled ")[-1]
        handled.append(int(re.search(r"handled (\d+) messages", line).group(1)))
    assert sum(handled) == n, handled  # each message went to exactly one of them
    assert min(handled) >= n // 10, handled  # both took a real share
    check_exactly_once(db, n)
