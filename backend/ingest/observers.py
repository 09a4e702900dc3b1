"""The one hook through which other parts learn that a batch was committed.

The buffer calls `WriteObservers.notify` after each committed write (and the replayer after
each replayed chunk); whoever wants to see committed readings (today: the alert engine)
registers once, at wiring time. One registry instead of each feature wrapping the buffer's
callback in its own closure: the order is explicit and one failing observer cannot keep
the others from seeing the write.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from backend.ingest.sinks import Submission, WriteResult

log = logging.getLogger(__name__)

# The buffer's `on_written` signature: the committed submissions and what the sink reported.
WriteObserver = Callable[[list[Submission], WriteResult], None]


class WriteObservers:
    """Observers of committed writes, called in registration order on the flusher thread."""

    def __init__(self) -> None:
        self._observers: tuple[WriteObserver, ...] = ()
        self._lock = threading.Lock()

    def register(self, observer: WriteObserver) -> None:
        with self._lock:
            # A new tuple, so notify() can iterate without the lock.
            self._observers = (*self._observers, observer)

    def notify(self, batch: list[Submission], result: WriteResult) -> None:
        for observer in self._observers:
            try:
                observer(batch, result)
            except Exception:  # noqa: BLE001 - an observer must not undo a commit nor starve the others
                log.exception("write observer %r failed", observer)
