"""The durable write path of one worker, built in one place: buffer, circuit, spool, replayer.

`WritePath.build()` constructs every part with its collaborators, in dependency order, and
`close()` takes them down in reverse: the buffer flushes what it holds (to PostgreSQL or
the spool), the replayer stops between chunks, the probe stops, the spool seals its
segment and releases its directory. Shutdown and the tests use the same close().
"""

from __future__ import annotations

import logging
from pathlib import Path

from psycopg_pool import ConnectionPool

from backend.config import Config
from backend.ingest.buffer import BatchBuffer
from backend.ingest.circuit import CircuitBreaker
from backend.ingest.deadline import DeadlineRunner
from backend.ingest.faults import Faults
from backend.ingest.observers import WriteObservers
from backend.ingest.replay import Replayer
from backend.ingest.sinks.postgres import PostgresSink
from backend.ingest.spool import Spool

log = logging.getLogger(__name__)

DISABLED = {"off", "none", "disabled", "false", "0", "-"}


def spool_root(cfg: Config) -> Path | None:
    """SPOOL_DIR, else DATA_DIR/spool; None when the spool is switched off."""
    if (cfg.spool_dir or "").strip().lower() in DISABLED or cfg.spool_max_bytes <= 0:
        return None
    return Path(cfg.spool_dir or Path(cfg.data_dir) / "spool").resolve()


def open_spool(cfg: Config, root: Path | None) -> Spool | None:
    """The worker's spool, or None when it is off or unusable (ingest then answers 503 in an outage)."""
    if root is None:
        log.warning("spool disabled: while the database is unreachable ingest answers 503")
        return None
    try:
        return Spool(root, max_bytes=cfg.spool_max_bytes, min_free_bytes=cfg.spool_min_free_bytes).open()
    except OSError as exc:
        log.error("spool at %s unusable (%s): running without it; ingest answers 503 while the"
                  " database is unreachable", root, exc)
        return None


class WritePath:
    def __init__(self, *, buffer: BatchBuffer, circuit: CircuitBreaker, sink: PostgresSink,
                 spool: Spool | None, replayer: Replayer | None) -> None:
        self.buffer = buffer
        self.circuit = circuit
        self.sink = sink
        self.spool = spool
        self.replayer = replayer
        self._closed = False

    @classmethod
    def build(cls, cfg: Config, pool: ConnectionPool, observers: WriteObservers, *, probe_timeout: float = 5.0,
              replay_scan_interval: float = 1.0, replay_chunk_rows: int | None = None) -> WritePath:
        """Construct (not start) the write path of `cfg` on `pool`; see docs/reliability.md."""
        root = spool_root(cfg)
        faults = Faults.from_config(cfg.fault_point, cfg.testing, root or Path(cfg.data_dir))
        sink = PostgresSink(pool, store_raw=cfg.store_raw_payload)
        runner = DeadlineRunner()
        circuit = CircuitBreaker(sink.ping, runner, base_delay=cfg.retry_base_delay, max_delay=cfg.retry_max_delay,
                                 probe_timeout=probe_timeout)
        spool = open_spool(cfg, root)
        write_timeout = max(0.5, cfg.ack_timeout / 2)
        buffer = BatchBuffer(
            sink, circuit=circuit, spool=spool, observers=observers, runner=runner, faults=faults,
            batch_size=cfg.batch_size, max_batch_rows=cfg.flush_max_readings, flush_interval=cfg.flush_interval,
            flush_linger=cfg.flush_linger, max_pending=cfg.buffer_max_readings, max_retries=cfg.max_retries,
            retry_base_delay=cfg.retry_base_delay, retry_max_delay=cfg.retry_max_delay, write_timeout=write_timeout,
        )
        replayer = None
        if spool is not None:
            replay_sink = PostgresSink(pool, store_raw=cfg.store_raw_payload, replay=True,
                                       after_commit=faults.hook("after_commit"))
            replayer = Replayer(spool, replay_sink, circuit, buffer, observers, runner=runner,
                                chunk_rows=replay_chunk_rows or 2 * cfg.batch_size, scan_interval=replay_scan_interval,
                                write_timeout=max(5.0, 2 * write_timeout))
        return cls(buffer=buffer, circuit=circuit, sink=sink, spool=spool, replayer=replayer)

    def start(self) -> WritePath:
        self.buffer.start()
        self.circuit.start()
        if self.replayer is not None:
            self.replayer.start()
        return self

    def close(self, timeout: float = 30.0) -> bool:
        """Flush and stop everything; True when the buffer emptied in time. Safe to call twice."""
        if self._closed:
            return True
        self._closed = True
        ok = self.buffer.close(timeout)
        if self.replayer is not None:
            self.replayer.stop(timeout=min(10.0, timeout))
        self.circuit.stop(timeout=1)
        if self.spool is not None:
            self.spool.close()
        return ok
