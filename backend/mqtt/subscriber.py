"""The paho-mqtt 2.x client: persistent MQTT 5 session, QoS 1, manual acknowledgement.

- `clean_start=False` with a Session Expiry Interval: the broker keeps the subscriptions and
  every unacknowledged or queued QoS 1 message while the subscriber is away (killed or
  restarted under the same MQTT_CLIENT_ID), and delivers them when it is back.
- `manual_ack=True`: paho does not send the PUBACK on receipt; `AckSequencer` sends it
  once the handler said the readings are durable (or the message is refused for good).
- Receive Maximum bounds how many unacknowledged messages the broker sends at once: that
  is the subscriber's memory bound and how many messages can share one commit.
- Subscriptions are shared (`$share/<group>/...`): several subscriber processes with the
  same group (and different client ids) split the messages between them.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from backend.mqtt.acks import AckSequencer
from backend.mqtt.handler import MessageHandler
from backend.mqtt.settings import MqttSettings
from backend.mqtt.topics import subscriptions

IDEMPOTENCY_PROPERTY = "Idempotency-Key"
log = logging.getLogger("backend.mqtt")


class Subscriber:
    def __init__(self, settings: MqttSettings, handler: MessageHandler, stopping: threading.Event) -> None:
        self.settings = settings
        self.handler = handler
        self.stopping = stopping
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=settings.client_id,
                                  protocol=mqtt.MQTTv5, manual_ack=True)
        b = settings.broker
        if b.username is not None:
            self.client.username_pw_set(b.username, b.password)
        if b.tls:
            self.client.tls_set()
        self.client.reconnect_delay_set(min_delay=1, max_delay=30)
        self.acks = AckSequencer(self.client.ack)
        self._generation = 0
        self._dup_logged = -1
        self.connected = threading.Event()
        self.workers = ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="mqtt-ingest")
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.handled = 0

    def _connect_properties(self) -> Properties:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.settings.session_expiry_s
        props.ReceiveMaximum = self.settings.receive_maximum
        return props

    def run(self) -> None:
        """Connect and serve until `stopping` is set; then hand back what is in flight and leave."""
        b = self.settings.broker
        self.client.connect_async(b.host, b.port, keepalive=self.settings.keepalive_s, clean_start=False,
                                  properties=self._connect_properties())
        self.client.loop_start()
        self.stopping.wait()
        self.workers.shutdown(wait=True, cancel_futures=False)  # handlers give up retrying once stopping
        self.client.disconnect()
        self.client.loop_stop()

    # ---- paho's network thread ------------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, _userdata: Any, flags: Any, reason: Any, _props: Any) -> None:
        if reason.is_failure:
            log.error("mqtt broker %s:%s refused the connection: %s", self.settings.broker.host,
                      self.settings.broker.port, reason)
            return
        self._generation = self.acks.new_connection()
        topics = subscriptions(self.settings)
        client.subscribe([(t, SubscribeOptions(qos=1)) for t in topics])
        log.info("mqtt connected to %s:%s as %s (session present: %s); subscribed to %s",
                 self.settings.broker.host, self.settings.broker.port, self.settings.client_id,
                 getattr(flags, "session_present", "?"), ", ".join(topics))
        self.connected.set()

    def _on_disconnect(self, _client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        self.connected.clear()
        if not self.stopping.is_set():
            log.warning("mqtt disconnected (%s); reconnecting, unacknowledged messages will be redelivered", reason)

    def _on_message(self, _client: mqtt.Client, _userdata: Any, msg: mqtt.MQTTMessage) -> None:
        generation = self._generation
        if msg.dup and self._dup_logged != generation:
            self._dup_logged = generation
            log.info("broker redelivers messages not acknowledged before (DUP); re-stored as no-ops")
        if msg.qos and not self.acks.received(generation, msg.mid, msg.qos):
            return
        content_type = getattr(msg.properties, "ContentType", None) if msg.properties else None
        user = dict(getattr(msg.properties, "UserProperty", None) or []) if msg.properties else {}
        key = user.get(IDEMPOTENCY_PROPERTY)  # MQTT 5 user property: the HTTP header's counterpart
        try:
            self.workers.submit(self._handle, generation, msg.mid, msg.qos, msg.topic, msg.payload, content_type,
                                key)
        except RuntimeError:  # shutting down: not acknowledged, the broker delivers it again later
            pass

    # ---- worker threads ------------------------------------------------------------------

    def _handle(self, generation: int, mid: int, qos: int, topic: str, payload: bytes,
                content_type: str | None, idempotency_key: str | None = None) -> None:
        try:
            verdict = self.handler.handle(topic, payload, content_type, idempotency_key)
            ack = verdict.ack
        except Exception as exc:  # noqa: BLE001 - a bug must not kill the worker nor come back forever
            log.exception("mqtt message on %r: unexpected error", topic[:200])
            self.handler.quarantine.refuse(topic, payload, f"internal error: {type(exc).__name__}: {exc}")
            ack = True
        self.handled += 1
        if qos:
            self.acks.done(generation, mid, ack)
