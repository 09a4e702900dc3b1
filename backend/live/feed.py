"""Reads committed readings from `stream_events` and feeds them to the hub, in id order.

A cursor (the last row id dispatched) and "id > cursor" reads: ids are in commit order
(migrations/0040), so nothing committed is skipped and nothing uncommitted is seen. The
reads happen on a wake-up (NOTIFY telemetry_stream, sent by the writer's transaction and
delivered at its commit, migrations/0041; also the Redis channel when REDIS_URL is set,
published by backend/live/publisher.py after each commit) and at least every STREAM_POLL_S, so a lost wake-up or a writer that sends none only adds latency. Old rows
are deleted in bounded batches (STREAM_RETENTION_S), by one stream process at a time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator

import orjson
import psycopg
from psycopg_pool import AsyncConnectionPool

from backend.live.frames import StreamEvent, events_of_row, split_event_id
from backend.live.hub import Hub
from backend.live.publisher import CHANNEL
from backend.store.rollups import PRUNE_BATCH, PRUNE_EVERY_S, PRUNE_LOCK, PRUNE_SQL

log = logging.getLogger(__name__)

PAGE_ROWS = 200


def _loads(data: bytes | str) -> object:
    return orjson.loads(data)


class EventFeed:
    def __init__(self, database_url: str, hub: Hub, *, redis_url: str = "", poll_s: float = 1.0,
                 retention_s: int = 900, coalesce_s: float = 0.0) -> None:
        self.database_url = database_url
        self.hub = hub
        self.redis_url = redis_url
        self.poll_s = poll_s
        self.retention_s = retention_s
        self.coalesce_s = coalesce_s
        self.pool = AsyncConnectionPool(database_url, min_size=1, max_size=4, open=False,
                                        kwargs={"autocommit": True, "prepare_threshold": None},
                                        configure=self._configure)  # no prepared statements: poolers
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.wakeups = 0
        self.reads = 0
        self._created: dict[int, float] = {}
        self.lag_ms: deque[float] = deque(maxlen=1000)  # commit-to-dispatch of the last rows
        self.read_ms: deque[float] = deque(maxlen=1000)  # how long the last reads of new rows took

    @staticmethod
    async def _configure(conn: psycopg.AsyncConnection) -> None:
        psycopg.types.json.set_json_loads(_loads, conn)

    async def start(self) -> None:
        await self.pool.open(wait=True, timeout=30)
        async with self.pool.connection() as conn:
            row = await (await conn.execute("SELECT coalesce(max(id), 0) FROM stream_events")).fetchone()
        self.hub.cursor = int(row[0]) if row else 0  # live from now; older rows via Last-Event-ID
        wakes = [self._pg_wakeups(), *([self._redis_wakeups()] if self.redis_url else [])]
        self._tasks = [*map(asyncio.create_task, wakes), asyncio.create_task(self._follow()),
                       asyncio.create_task(self._cleanup())]

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.pool.close()

    # ---- following the table --------------------------------------------------------

    async def _follow(self) -> None:
        loop = asyncio.get_running_loop()
        last_read = float("-inf")
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.poll_s)
            except TimeoutError:
                pass
            # Coalesce: a wake-up sooner than coalesce_s after the last read waits for the rest
            # of it, and the commits of that time are read (and written to each subscriber) at
            # once. Every read costs a query and a socket write per matched subscriber (the
            # kernel's and each client's share of a write dwarfs its bytes); a commit after a
            # quiet spell is read at once.
            pause = last_read + self.coalesce_s - loop.time()
            if pause > 0:
                await asyncio.sleep(pause)
            self._wake.clear()
            last_read = loop.time()
            try:
                await self.read_new()
            except (psycopg.Error, OSError) as exc:
                log.warning("stream feed cannot read stream_events (%s); retrying", exc)
                await asyncio.sleep(min(5.0, self.poll_s * 2))

    async def read_new(self) -> None:
        """Dispatch every row after the hub's cursor, a page at a time."""
        while True:
            t0 = time.perf_counter()
            rows = await self._rows_after(self.hub.cursor, None, PAGE_ROWS)
            self.read_ms.append((time.perf_counter() - t0) * 1000)
            self.reads += 1
            if not rows:
                return
            self.hub.dispatch(rows)
            # How far behind the commits this process runs (a row's time is taken inside its commit).
            now = time.time()
            self.lag_ms.extend((now - created) * 1000 for created in self._created.values())
            self._created.clear()
            if len(rows) < PAGE_ROWS:
                return

    async def _rows_after(self, after: int, upto: int | None, limit: int) -> list[tuple[int, list[list[object]]]]:
        async with self.pool.connection() as conn:
            if upto is None:
                cur = await conn.execute("SELECT id, readings, extract(epoch FROM created_at)::float8"
                                         " FROM stream_events WHERE id > %s ORDER BY id LIMIT %s", (after, limit))
                got = await cur.fetchall()
                self._created.update((int(r[0]), float(r[2])) for r in got)
                return [(int(r[0]), r[1]) for r in got]
            else:
                cur = await conn.execute("SELECT id, readings FROM stream_events WHERE id > %s AND id <= %s"
                                         " ORDER BY id LIMIT %s", (after, upto, limit))
            return [(int(r[0]), r[1]) for r in await cur.fetchall()]

    async def catch_up(self, last_event_id: int, upto_row: int) -> AsyncIterator[list[StreamEvent]]:
        """The events after `last_event_id` in rows up to `upto_row` (what the hub dispatched)."""
        row, index = split_event_id(last_event_id)
        first = True
        after = row - 1
        while after < upto_row:
            rows = await self._rows_after(after, upto_row, PAGE_ROWS)
            if not rows:
                return
            page: list[StreamEvent] = []
            for row_id, readings in rows:
                evs = events_of_row(row_id, readings)
                if first and row_id == row:
                    evs = evs[index + 1:]  # the rest of the row the client stopped in
                page.extend(evs)
            first = False
            after = rows[-1][0]
            yield page

    async def oldest_row(self) -> int | None:
        async with self.pool.connection() as conn:
            row = await (await conn.execute("SELECT min(id) FROM stream_events")).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    # ---- wake-ups ---------------------------------------------------------------------

    def poke(self) -> None:
        self.wakeups += 1
        self._wake.set()

    async def _pg_wakeups(self) -> None:
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self.database_url, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    self.poke()  # anything committed while we were not listening
                    async for _ in conn.notifies():
                        self.poke()
            except (psycopg.Error, OSError) as exc:
                log.warning("LISTEN %s lost (%s); polling until it is back", CHANNEL, exc)
                await asyncio.sleep(2.0)

    async def _redis_wakeups(self) -> None:
        import redis.asyncio as aioredis

        while True:
            try:
                client = aioredis.from_url(self.redis_url)
                async with client.pubsub() as pubsub:
                    await pubsub.subscribe(CHANNEL)
                    self.poke()
                    async for msg in pubsub.listen():
                        if msg.get("type") == "message":
                            self.poke()
            except (OSError, aioredis.RedisError) as exc:
                log.warning("Redis channel %s lost (%s); polling until it is back", CHANNEL, exc)
                await asyncio.sleep(2.0)

    # ---- retention --------------------------------------------------------------------

    async def _cleanup(self) -> None:
        while True:
            await asyncio.sleep(PRUNE_EVERY_S)
            try:
                await self.delete_expired()
            except (psycopg.Error, OSError) as exc:
                log.warning("stream_events cleanup failed (%s)", exc)

    async def delete_expired(self) -> int:
        deleted = 0
        async with self.pool.connection() as conn:
            while True:  # bounded batches: short transactions, no long lock on the table
                # A transaction-level lock (one cleaner across processes and instances) that a
                # transaction-mode pooler cannot leak, unlike a session lock.
                async with conn.transaction():
                    got = await (await conn.execute("SELECT pg_try_advisory_xact_lock(%s)",
                                                    (PRUNE_LOCK,))).fetchone()
                    if not got or not got[0]:
                        return deleted
                    # The rule the rollup merger prunes by too (backend/store/rollups.py).
                    cur = await conn.execute(PRUNE_SQL, (self.retention_s, PRUNE_BATCH))
                deleted += cur.rowcount
                if cur.rowcount < PRUNE_BATCH:
                    return deleted
                await asyncio.sleep(0)
