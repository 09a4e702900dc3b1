"""The subscriber process: the same write path as a gunicorn worker, fed by MQTT.

It builds what create_app builds for ingest (pool, write path with buffer, spool and
replayer, catalogue, alert engine as a write observer) without Flask, then runs the
Subscriber until SIGTERM/SIGINT. Its spool directory is its own (`w-<pid>-...` under
SPOOL_DIR, like a worker's), so a killed subscriber's spooled readings are adopted and
replayed by any live worker or subscriber sharing SPOOL_DIR.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from dataclasses import dataclass

from psycopg_pool import ConnectionPool

from backend.config import Config, ConfigError
from backend.fleet.alerts.engine import AlertEngine
from backend.fleet.alerts.webhooks import WebhookSender
from backend.ingest.catalogue import FieldCatalogue
from backend.ingest.guarded_pool import GuardedPool
from backend.ingest.idempotency import IdempotencyStore
from backend.ingest.observers import WriteObservers
from backend.ingest.parsing.teltonika import RegisterMap
from backend.ingest.pipeline import IngestPipeline
from backend.ingest.register_map import load_register_map
from backend.ingest.write_path import WritePath
from backend.mqtt.handler import MessageHandler
from backend.mqtt.keys import KeyResolver
from backend.mqtt.quarantine import Quarantine
from backend.mqtt.settings import MqttSettings, from_config
from backend.mqtt.subscriber import Subscriber
from backend.store.database import Database
from backend.store.migrations import migrate
from backend.store.pool import make_pool

log = logging.getLogger("backend.mqtt")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m backend.mqtt", description="MQTT subscriber into ingest")
    parser.add_argument("--client-id", help="overrides MQTT_CLIENT_ID (one per process; keeps its session)")
    parser.add_argument("--group", help="overrides MQTT_GROUP (shared subscription group)")
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in (("mqtt_client_id", args.client_id), ("mqtt_group", args.group)) if v is not None}
    try:
        cfg = Config.from_env(**overrides)
        settings = from_config(cfg)
        registers = load_register_map(cfg)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=cfg.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not cfg.database_url:
        log.warning("no DATABASE_URL: the subscriber attaches to the embedded PostgreSQL in DATA_DIR")
    ingest = IngestProcess.build(cfg, settings, registers)
    subscriber = Subscriber(settings, ingest.handler, ingest.stopping)
    stopping = ingest.stopping

    def _stop(signum: int, _frame: object) -> None:
        log.info("signal %d: stopping (in-flight messages finish or stay with the broker)", signum)
        stopping.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    ingest.start()
    try:
        subscriber.run()
    finally:
        log.info("handled %d messages, %d acknowledged", subscriber.handled, subscriber.acks.acked)
        ingest.close(cfg.ack_timeout)
    return 0


@dataclass
class IngestProcess:
    """The write path and the message handler of one subscriber process (also used by tests and bench)."""

    pool: ConnectionPool
    write_path: WritePath
    alerts: AlertEngine
    webhooks: WebhookSender
    handler: MessageHandler
    stopping: threading.Event
    idempotency: IdempotencyStore

    @classmethod
    def build(cls, cfg: Config, settings: MqttSettings, registers: RegisterMap) -> IngestProcess:
        database = Database.resolve(cfg)
        migrate(database.url)
        pool = make_pool(database.url, cfg.db_pool_min, cfg.db_pool_max, name="mqtt")
        observers = WriteObservers()
        write_path = WritePath.build(cfg, pool, observers)
        buffer = write_path.buffer
        catalogue = FieldCatalogue.for_buffer(GuardedPool(pool, write_path.circuit), buffer, cfg)
        webhooks = WebhookSender(pool, base_delay=max(0.01, cfg.retry_base_delay), max_delay=cfg.retry_max_delay,
                                 allow_private=cfg.alert_webhook_allow_private)
        alerts = AlertEngine(pool, webhooks, silence_check_s=cfg.alert_silence_check_s)
        observers.register(alerts.on_written)  # readings over MQTT open alerts like HTTP ones
        stopping = threading.Event()
        idempotency = IdempotencyStore(pool, buffer.sink_available, ttl_s=cfg.idempotency_ttl_s,
                                       wait_s=cfg.idempotency_wait_s)
        handler = MessageHandler(settings, IngestPipeline(cfg, buffer, catalogue), pool, KeyResolver(pool),
                                 Quarantine(pool), registers, stopping, max_delay=min(5.0, cfg.retry_max_delay),
                                 idempotency=idempotency)
        return cls(pool, write_path, alerts, webhooks, handler, stopping, idempotency)

    def start(self) -> IngestProcess:
        self.write_path.start()
        self.alerts.start()
        self.idempotency.start()  # the expiry sweep
        return self

    def close(self, timeout: float = 10.0) -> None:
        self.stopping.set()
        self.idempotency.close()
        self.write_path.close(timeout)
        self.alerts.close()
        self.webhooks.close()
        self.pool.close()
