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


TIMES = ["2026-01-01T00:00:00+00:00", "2026-01-01T13:00:00.25+01:00", "2026-03-29T03:30:00.123456+02:00"]


@settings(max_examples=200, deadline=None)
@given(rows=st.lists(readings, min_size=1, max_size=6), subs=st.lists(filters, min_size=1, max_size=5),
       limit=st.integers(1, 60), per_read=st.integers(1, 3))
def test_every_subscriber_gets_its_matches_in_order_or_a_count_of_what_it_missed(rows, subs, limit,
                                                                                per_read) -> None:
    """`per_read` rows per dispatch: the feed hands over what one (coalesced) read found."""
    async def run() -> None:
        hub = Hub(limit)
        subscribers = [hub.subscribe(d, m) for d, m in subs]
        sent = []
        batch: list = []
        batches = []
        for row_id, row in enumerate(rows, start=1):
            readings = [[d, m, TIMES[i % 3], float(i), None] for i, (d, m) in enumerate(row)]
            sent.extend(events_of_row(row_id, readings))
            batch.append((row_id, readings))
            if len(batch) == per_read or row_id == len(rows):
                batches.append(sum(len(r) for _, r in batch))
                hub.dispatch(batch)
                batch = []
        assert hub.cursor == len(rows)
        by_id = {e.event_id: e for e in sent}
        for sub in subscribers:
            got = frames(sub.take())
            want = [e.event_id for e in sent if (sub.devices is None or e.device_id in sub.devices)
                    and (sub.metrics is None or e.metric in sub.metrics)]
            ids = [f["id"] for f in got if f["event"] == "reading"]
            missed = sum(f["missed"] for f in got if f["event"] == "missed")
            assert len(ids) + missed == len(want)  # nothing silently dropped
            assert ids == sorted(ids) and set(ids) <= set(want)
            assert len(ids) <= max(limit, max(batches))  # the limit, or what one read found
            if missed == 0:
                assert ids == want
            for f in got:
                if f["event"] == "reading":
                    e = by_id[f["id"]]  # the live path's inlined encoding says what a StreamEvent says
                    assert frames([e.frame]) == [f]
                    assert f["ts"].endswith("Z") and f["ts"] == e.ts
                    assert (sub.devices is None or f["device_id"] in sub.devices)
                    assert (sub.metrics is None or f["metric"] in sub.metrics)
            hub.unsubscribe(sub)
        assert hub.count == 0

    run_in_own_thread(run)


def test_listeners_get_events_only_while_active() -> None:
    async def run() -> None:
        hub = Hub(10)
        got: list = []
        active = [False]
        hub.add_listener(got.extend, active=lambda: active[0])
        hub.dispatch([(1, [["d1", "a", TIMES[0], 1.0, None]])])
        assert got == []  # no Socket.IO client: no event objects made at all
        active[0] = True
        hub.dispatch([(2, [["d1", "a", TIMES[1], 2.0, None], ["d2", "b", TIMES[2], None, "x"]])])
        assert [(e.event_id, e.device_id, e.ts, e.value, e.text) for e in got] == [
            (2 * ROW_SPAN, "d1", "2026-01-01T12:00:00.250000Z", 2.0, None),
            (2 * ROW_SPAN + 1, "d2", "2026-03-29T01:30:00.123456Z", None, "x")]

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
