"""PUBACKs in the order the PUBLISH packets came, each only once its message is durable.

MQTT asks a receiver to acknowledge QoS 1 messages in the order it received them
(MQTT 5.0 section 4.6). Messages are handled by several threads (so the buffer can put
concurrent ones into one commit), so they finish out of order: a finished message waits
here until every earlier one has finished too, then they are acknowledged together.

A reconnect starts a new generation: acknowledgements for the previous connection's
packet ids are dropped (the broker redelivers those messages on the new connection, and
storing them again is a no-op because their readings carry their times).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable

Ack = Callable[[int, int], None]  # (mid, qos) -> send the PUBACK


class AckSequencer:
    def __init__(self, ack: Ack) -> None:
        self._ack = ack
        self._lock = threading.Lock()
        self._generation = 0
        self._pending: OrderedDict[int, bool | None] = OrderedDict()  # mid -> done? (None: never ack)
        self._qos: dict[int, int] = {}
        self.acked = 0

    def new_connection(self) -> int:
        """Forget the previous connection's messages; returns the new generation."""
        with self._lock:
            self._generation += 1
            self._pending.clear()
            self._qos.clear()
            return self._generation

    def received(self, generation: int, mid: int, qos: int) -> bool:
        """Track a received message; False when it belongs to an older connection."""
        with self._lock:
            if generation != self._generation:
                return False
            self._pending[mid] = False
            self._qos[mid] = qos
            return True

    def done(self, generation: int, mid: int, ack: bool) -> None:
        """Mark a message handled; send every PUBACK that is now in order."""
        with self._lock:
            if generation != self._generation or mid not in self._pending:
                return
            self._pending[mid] = True if ack else None
            ready: list[tuple[int, int]] = []
            while self._pending:
                head, state = next(iter(self._pending.items()))
                if state is not True:  # not finished, or left for redelivery (None): nothing after it first
                    break
                self._pending.popitem(last=False)
                ready.append((head, self._qos.pop(head)))
            for m, q in ready:  # under the lock: PUBACKs leave in order even with concurrent finishers
                self._ack(m, q)
            self.acked += len(ready)

    def outstanding(self) -> int:
        with self._lock:
            return len(self._pending)
