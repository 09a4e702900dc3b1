"""backend/ops/heap.py: after settle(), what existed is out of collections and young ones are rarer."""

from __future__ import annotations

import gc

from backend.ops import heap


def test_settle_freezes_the_startup_heap_and_raises_the_young_threshold() -> None:
    before = gc.get_threshold()
    try:
        startup = [[i] for i in range(1000)]  # containers that exist at start-up
        heap.settle()
        assert gc.get_freeze_count() >= len(startup)
        assert gc.get_threshold()[0] == heap.GEN0_THRESHOLD
        # A page of readings (lists) made and freed after settling is never seen by a collection.
        counts = gc.get_count()[0]
        page = [[n, "m", 1.0] for n in range(5000)]
        assert gc.get_count()[0] >= counts + len(page)  # no young collection ran in between
        del page
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
