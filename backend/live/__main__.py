"""`python -m backend.live`: the stream process (started by gunicorn's master: process.py)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable

from aiohttp import web

from backend.config import Config, ConfigError
from backend.live.feed import EventFeed
from backend.live.hub import Hub
from backend.live.secret import token_secret
from backend.live.server import StreamServer
from backend.live.socketio_bridge import SocketIOBridge
from backend.live.tokens import StreamTokens
from backend.ops import heap
from backend.ops.multiproc import ENV as MULTIPROC_ENV

log = logging.getLogger("backend.live")



async def serve(cfg: Config) -> None:
    url = cfg.stream_database_url or cfg.database_url
    if not url:
        raise SystemExit("backend.live: DATABASE_URL is empty (gunicorn's master passes the embedded one)")
    tokens = StreamTokens(token_secret(cfg, url), cfg.stream_token_ttl_s)
    hub = Hub(cfg.stream_queue_events, on_count=_subscriber_gauge())
    feed = EventFeed(url, hub, redis_url=cfg.redis_url, poll_s=cfg.stream_poll_s,
                     retention_s=cfg.stream_retention_s, coalesce_s=cfg.stream_coalesce_ms / 1000)
    app = web.Application()
    server = StreamServer(cfg, hub, feed, tokens)
    server.routes(app)
    bridge = SocketIOBridge(cfg, hub, tokens)
    bridge.sio.attach(app)
    await feed.start()
    beats = asyncio.create_task(server.heartbeats())
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, cfg.stream_host, cfg.stream_port, backlog=2048, reuse_address=True)
    await site.start()
    heap.settle()  # full collections were this process's longest pauses (backend/ops/heap.py)
    log.info("stream on http://%s:%s/api/stream (wake-ups: %s)", cfg.stream_host, cfg.stream_port,
             "LISTEN/NOTIFY and Redis" if cfg.redis_url else "LISTEN/NOTIFY")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    orphan_watch = asyncio.create_task(_stop_when_orphaned(stop))
    await stop.wait()
    orphan_watch.cancel()
    beats.cancel()
    await runner.cleanup()
    await feed.close()
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(os.getpid())  # its subscribers no longer count


def _subscriber_gauge() -> Callable[[int], None] | None:
    """The instance's telemetry_stream_subscribers gauge, when gunicorn's master made the
    metrics directory (backend/ops/multiproc.py): this process writes its own file there,
    and /metrics, answered by a worker, adds it in."""
    if not os.environ.get(MULTIPROC_ENV):
        return None
    from backend.ops.metrics import Metrics

    return Metrics().stream_subscribers.set


async def _stop_when_orphaned(stop: asyncio.Event) -> None:
    # Started by gunicorn's master: if the master is killed outright (no on_exit), do not
    # linger holding STREAM_PORT. Run by hand (parent: a shell), it stops with that shell.
    parent = os.getppid()
    while os.getppid() == parent:
        await asyncio.sleep(1.0)
    log.warning("parent process %s is gone; stopping the stream process", parent)
    stop.set()


def main() -> int:
    try:
        cfg = Config.from_env()
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=cfg.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(cfg))
    return 0


if __name__ == "__main__":
    sys.exit(main())
