"""Garbage-collector settings for long-running processes that parse many short-lived containers.

The stream process parses every committed reading into a list. With CPython's default
thresholds (700, 10, 10) the readings of one read (a flush is up to 5,000 of them; a busy
read holds a few flushes) outlive several young collections while they are parsed and
dispatched, get promoted, and keep triggering full collections over the whole heap (every
module, every open connection). One stream bench (docs/stream.md) counted 24 full
collections of up to 248 ms, 3 s in all, in one process: they were the 99th percentile of
commit-to-event latency. Settled, the same run had 2 full collections of at most 36 ms.
"""

from __future__ import annotations

import gc

# Young collections after this many new container objects (net): the readings of a steady
# read are dispatched and freed before one runs, so they are never promoted.
GEN0_THRESHOLD = 50_000


def settle(gen0: int = GEN0_THRESHOLD, older: int = 20) -> None:
    """Call once start-up is done: what exists by then (modules, the app, its pools) is frozen,
    out of every later collection, and young collections run after `gen0` new containers
    (the older generations after `older` collections of the one below)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(gen0, older, older)
