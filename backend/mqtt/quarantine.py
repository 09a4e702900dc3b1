"""MQTT messages refused before the pipeline could file them: logged and kept in the quarantine.

A message the pipeline parsed has its rejected parts quarantined by the write path itself;
this is for the rest (a topic no kind takes, a key that may not write, a body that is not
UTF-8, a whole refusal): one `telemetry_quarantine` row with the topic, the reason and the
start of the payload, so an operator sees what a gateway sent and why it was not stored.
"""

from __future__ import annotations

import logging

from psycopg_pool import ConnectionPool

log = logging.getLogger("backend.mqtt")

RAW_MAX = 2000


class Quarantine:
    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool

    def refuse(self, topic: str, payload: bytes, reason: str, device: str | None = None) -> None:
        # PostgreSQL text cannot hold NUL; a topic or payload may (the reason quotes the topic).
        topic, reason = topic.replace("\x00", "\ufffd"), reason.replace("\x00", "\ufffd")
        log.warning("mqtt message on %r refused: %s", topic[:200], reason)
        raw = payload[:RAW_MAX].decode("utf-8", errors="replace").replace("\x00", "\ufffd")
        try:
            with self.pool.connection() as conn:
                conn.execute("INSERT INTO telemetry_quarantine (device_id, position, reason, raw)"
                             " VALUES (%s, 0, %s, %s)", (device, f"mqtt {topic[:200]}: {reason}", raw))
        except Exception as exc:  # noqa: BLE001 - the log line above already holds the reason
            log.error("could not quarantine the refused message on %r: %s", topic[:200], exc)
