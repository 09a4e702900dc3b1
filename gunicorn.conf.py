"""gunicorn settings for `make run` and production (behind nginx).

Threads matter: each request waits for its group commit, so a worker needs several
threads to keep its CPU busy while some requests wait on PostgreSQL.
"""

import multiprocessing
import os


def setting(name: str, default: str) -> str:
    # Empty means "the default", as for the service's own settings: compose hands every
    # setting over, unset ones as "" (docker-compose.yml).
    return os.environ.get(name) or default


bind = f"{setting('HOST', '127.0.0.1')}:{setting('PORT', '5000')}"
workers = int(setting("WEB_CONCURRENCY", "0")) or max(2, multiprocessing.cpu_count() + 1)
# gthread whose event loop reads each request before a thread runs it, so slow or idle clients
# never hold a thread (issue 11; backend/http_worker.py, figures in docs/reliability.md).
# GUNICORN_WORKER_CLASS=gthread is gunicorn's own, for comparison or TLS in gunicorn.
worker_class = setting("GUNICORN_WORKER_CLASS", "backend.http_worker.BufferingThreadWorker")
threads = int(setting("GUNICORN_THREADS", "16"))
# gthread keeps a keep-alive connection on the worker that accepted it, and one worker can
# accept all of them (measured: 32 wrk connections, 1 of 3 workers busy). Capping the
# connections per worker spreads clients across workers, and so across flushers and GILs.
worker_connections = int(setting("GUNICORN_WORKER_CONNECTIONS", "0")) or 2 * threads
keepalive = 75  # nginx upstream keep-alive and gateways that reuse connections
timeout = int(setting("GUNICORN_TIMEOUT", "60"))
graceful_timeout = int(setting("GUNICORN_GRACEFUL_TIMEOUT", "30"))
max_requests = int(setting("GUNICORN_MAX_REQUESTS", "0"))
max_requests_jitter = int(setting("GUNICORN_MAX_REQUESTS_JITTER", "0"))
accesslog = os.environ.get("GUNICORN_ACCESSLOG") or None
# JSON lines for the error and access logs, like the application's (backend/ops/logs.py).
if setting("LOG_FORMAT", "json").lower() == "json":
    logger_class = "backend.ops.logs.JsonGunicornLogger"
errorlog = "-"
loglevel = setting("LOG_LEVEL", "info").lower()
wsgi_app = "backend:create_app()"
# Several instances (tests, benchmarks) run side by side; the shared control socket would clash.
control_socket_disable = True


def on_starting(server):
    # First: the instance's metrics directory, inherited by every worker (backend/ops/multiproc.py).
    from backend.ops import multiproc

    server.log.info("metrics directory: %s", multiproc.prepare())
    # Once, in the master, before any worker: schema and partitions are ready when workers start.
    from backend.cli import prepare_database
    from backend.config import Config, ConfigError

    try:
        cfg = Config.from_env()
    except ConfigError as exc:  # a bad setting: say which, and do not start workers that would fail
        server.log.error("configuration error: %s", exc)
        raise SystemExit(2) from None
    try:
        prepare_database(cfg)
    except Exception as exc:  # noqa: BLE001 - database down at boot: serve anyway, ingest spools
        server.log.warning("database not reachable at start (%s); migrations run at the next start", exc)


def post_worker_init(worker):
    # The app is loaded: move its objects out of the garbage collector's view. Every batch
    # creates thousands of short-lived objects, and each full collection would otherwise
    # walk the whole loaded application too (measured: parsing ~15% faster with a loaded heap).
    # Every reading of a batch is a young object that lives until its flush, so with the
    # default threshold (700) a 1,000-reading request ran the young collection over and over
    # and promoted the readings into the older generations, which were then walked too:
    # about a third of parsing time (bench: 4.0 vs 2.7-3.0 us per reading). The young
    # generation is still collected, just after 20,000 allocations instead of 700.
    from backend.ops import heap

    heap.settle(gen0=20_000, older=10)


def worker_exit(server, worker):
    # Graceful stop and max_requests recycling: write what this worker still holds, then
    # release its connections (Services.close, the same shutdown the tests use).
    app = getattr(worker, "wsgi", None)
    svc = getattr(app, "extensions", {}).get("telemetry") if app is not None else None
    if svc is not None:
        svc.close(timeout=graceful_timeout)


_stream = None  # the stream process (backend/live/process.py), a child of this master


def when_ready(server):
    # The live stream runs in its own asyncio process (docs/stream.md): open streams cost a
    # coroutine there instead of a gthread thread here. STREAM_ENABLED=false leaves it out.
    global _stream
    from backend.config import Config, ConfigError

    try:
        cfg = Config.from_env()
    except ConfigError:
        return  # on_starting has already refused to start
    if cfg.stream_enabled:
        from backend.live.process import StreamProcess

        _stream = StreamProcess()
        _stream.start()
        server.log.info("stream process on %s:%s", cfg.stream_host, cfg.stream_port)


def child_exit(server, worker):
    # In the master: the worker's live gauges stop counting; its counters and status stay.
    from backend.ops import multiproc

    multiproc.worker_exited(worker.pid)


def on_exit(server):
    if _stream is not None:
        _stream.stop()
    from backend.ops import multiproc

    multiproc.remove_if_created()
