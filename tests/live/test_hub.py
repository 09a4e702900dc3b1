"""The hub's fan-out on its own: filters, order, bounded queues and the missed count."""

from __future__ import annotations

import asyncio
import threading

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from backend.live.frames import ROW_SPAN, events_of_row, split_event_id
from backend.live.hub import Hub

DEVICES = ["d1", "d2", "d3"]
METRICS = ["a", "b"]


def frames(chunks: list[bytes]) -> list[dict]:
    out = []
    for chunk in chunks:
        for frame in chunk.split(b"\n\n"):
            if frame:
                lines = dict(line.split(b": ", 1) for line in frame.split(b"\n") if b": " in line)
                out.append({"event": lines[b"event"].decode(), "id": int(lines[b"id"]) if b"id" in lines else None,
                            **orjson.loads(lines[b"data"])})
    return out


readings = st.lists(st.tuples(st.sampled_from(DEVICES), st.sampled_from(METRICS)), max_size=40)
filters = st.tuples(st.none() | st.frozensets(st.sampled_from(DEVICES), min_size=1),
                    st.none() | st.frozensets(st.sampled_from(METRICS), min_size=1))


def run_in_own_thread(coro_fn) -> None:
    """asyncio.run in a thread of its own: the session's Playwright (tests/dashboard) keeps an
    event loop on the main thread, where asyncio.run refuses to start another."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            asyncio.run(coro_fn())
        except BaseException as exc:  # noqa: BLE001 - handed back to the test's thread
            errors.append(exc)

    t = threading.Thread(target=target)
    t.start()
    t.join()
    if errors:
        raise errors[0]


@settings(max_examples=200, deadline=None)
@given(rows=st.lists(readings, min_size=1, max_size=6), subs=st.lists(filters, min_size=1, max_size=5),
       limit=st.integers(1, 60))
def test_every_subscriber_gets_its_matches_in_order_or_a_count_of_what_it_missed(rows, subs, limit) -> None:
    async def run() -> None:
        hub = Hub(limit)
        subscribers = [hub.subscribe(d, m) for d, m in subs]
        sent = []
        for row_id, row in enumerate(rows, start=1):
            readings = [[d, m, "2026-01-01T00:00:00+00:00", float(i), None] for i, (d, m) in enumerate(row)]
            sent.extend(events_of_row(row_id, readings))
            hub.dispatch([(row_id, readings)])
        assert hub.cursor == len(rows)
        for sub in subscribers:
            got = frames(sub.take())
            want = [e.event_id for e in sent if (sub.devices is None or e.device_id in sub.devices)
                    and (sub.metrics is None or e.metric in sub.metrics)]
            ids = [f["id"] for f in got if f["event"] == "reading"]
            missed = sum(f["missed"] for f in got if f["event"] == "missed")
            assert len(ids) + missed == len(want)  # nothing silently dropped
            assert ids == sorted(ids) and set(ids) <= set(want)
            assert len(ids) <= max(limit, max(len(r) for r in rows))  # the limit, or one whole commit
            if missed == 0:
                assert ids == want
            for f in got:
                if f["event"] == "reading":
                    assert (sub.devices is None or f["device_id"] in sub.devices)
                    assert (sub.metrics is None or f["metric"] in sub.metrics)
            hub.unsubscribe(sub)
        assert hub.count == 0

    run_in_own_thread(run)


def test_event_ids_address_a_reading_inside_a_row() -> None:
    evs = events_of_row(42, [["d", "m", "t", 1.0, None], ["d", "n", "t", None, "x"]])
    assert [e.event_id for e in evs] == [42 * ROW_SPAN, 42 * ROW_SPAN + 1]
    assert split_event_id(evs[1].event_id) == (42, 1)
    assert evs[1].frame.startswith(b"id: 42000001\nevent: reading\ndata: ")
    assert orjson.loads(evs[1].frame.split(b"data: ")[1]) == {"device_id": "d", "metric": "n", "ts": "t",
                                                               "value": None, "text": "x"}


def test_times_are_utc_with_z_whatever_zone_the_writer_had() -> None:
    from backend.live.frames import utc_z

    assert utc_z("2026-01-01T12:00:00.5+00:00") == "2026-01-01T12:00:00.5Z"
    assert utc_z("2026-01-01T13:00:00+01:00") == "2026-01-01T12:00:00Z"
    assert utc_z("2026-03-29T03:30:00.123456+02:00") == "2026-03-29T01:30:00.123456Z"
