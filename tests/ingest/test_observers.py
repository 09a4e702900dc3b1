"""The write-observer registry and the device guard: plain objects, no database needed."""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime

from backend.fleet.auth import Identity, guard_for, refused_devices
from backend.ingest.observers import WriteObservers
from backend.ingest.parsing import Reading
from backend.ingest.sinks import Submission, WriteResult


def _batch() -> list[Submission]:
    now = datetime.now(UTC)
    return [Submission(uuid.uuid4(), [Reading("n1", "x", now, 1.0)], now)]


def test_every_observer_sees_the_write_even_when_one_fails(caplog):
    observers = WriteObservers()
    seen: list[str] = []

    def broken(batch, result):
        seen.append("broken")
        raise RuntimeError("observer bug")

    observers.register(broken)
    observers.register(lambda batch, result: seen.append(f"second:{len(batch)}:{result.inserted}"))
    with caplog.at_level(logging.ERROR, logger="backend.ingest.observers"):
        observers.notify(_batch(), WriteResult(staged=1, inserted=1))
    assert seen == ["broken", "second:1:1"]
    assert "observer bug" in caplog.text


def _key(devices):
    return Identity("k_1", "gw", frozenset({"ingest"}), frozenset(devices) if devices is not None else None)


def test_device_guard_is_a_function_of_identity_and_device_ids():
    assert guard_for(None) is None
    assert guard_for(_key(None)) is None  # a key for any device needs no guard
    bound = _key(["n1", "n2"])
    assert refused_devices(bound, ["n1", "n2", "n1"]) is None
    assert refused_devices(bound, []) is None
    message = refused_devices(bound, ["n1", "n3"])
    assert message == "this API key may not write device n3; nothing was stored"
    guard = guard_for(bound)
    assert guard is not None and guard({"n2"}) is None and guard({"n9"}) == refused_devices(bound, ["n9"])


def test_device_guard_names_at_most_five_devices():
    message = refused_devices(_key(["n1"]), [f"d{i}" for i in range(8)])
    assert message == "this API key may not write device d0, d1, d2, d3, d4 and 3 more; nothing was stored"
