"""The feed reads once per STREAM_COALESCE_MS however many commits wake it (no database:
the read itself is replaced; what is counted is how many reads the wake-ups cause)."""

from __future__ import annotations

import asyncio

from backend.live.feed import EventFeed
from backend.live.hub import Hub
from tests.live.test_hub import run_in_own_thread


class CountingFeed(EventFeed):
    def __init__(self, coalesce_s: float) -> None:
        super().__init__("postgresql://unused", Hub(10), poll_s=60.0, coalesce_s=coalesce_s)
        self.read_count = 0
        self.read_event = asyncio.Event()

    async def read_new(self) -> None:
        self.read_count += 1
        self.read_event.set()


async def wakeups_then_reads(coalesce_s: float) -> int:
    """One wake-up, then one every 20 ms for 0.4 s: how many reads they cost."""
    feed = CountingFeed(coalesce_s)
    follow = asyncio.create_task(feed._follow())
    try:
        feed.poke()
        await asyncio.wait_for(feed.read_event.wait(), 10)  # the first one is read at once
        for _ in range(20):
            await asyncio.sleep(0.02)
            feed.poke()
        await asyncio.sleep(0.1)
        if coalesce_s > 1:  # the wake-ups of the window are served by one read at its end
            feed.read_event.clear()
            await asyncio.wait_for(feed.read_event.wait(), coalesce_s + 10)
        return feed.read_count
    finally:
        follow.cancel()
        await asyncio.gather(follow, return_exceptions=True)


def test_wakeups_within_the_window_are_served_by_one_read() -> None:
    counts: dict[str, int] = {}

    async def run() -> None:
        counts["coalesced"] = await wakeups_then_reads(coalesce_s=2.0)
        counts["each"] = await wakeups_then_reads(coalesce_s=0.0)

    run_in_own_thread(run)
    assert counts["coalesced"] == 2  # the first wake-up, then all 20 others at once
    assert counts["each"] > 5  # without coalescing, nearly a read per wake-up
