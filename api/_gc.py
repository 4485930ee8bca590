"""Garbage-collector tuning for a serving process.

The API process holds the query encoder (torch, sentence-transformers): millions of
long-lived objects that every full (generation 2) collection walks — measured at up to 475 ms
per pause on this machine, which set the API's p99 by itself. After start-up (encoder loaded,
clients built) :func:`freeze_startup_heap` moves everything alive into the permanent
generation, which collections skip, and raises the generation-0 threshold so the short-lived
garbage of each request (parsed JSON, arrays) is collected in fewer, equally cheap passes.
Measured in-process at concurrency 4 on 20k items: p99 677 → 250 ms, p50 222 → 174 ms.
"""

from __future__ import annotations

import gc

__all__ = ["freeze_startup_heap"]


def freeze_startup_heap(threshold0: int) -> None:
    """Collect once, freeze what survives, and set the generation-0 threshold
    (``threshold0 <= 0`` keeps the interpreter's)."""
    gc.collect()
    gc.freeze()
    if threshold0 > 0:
        _, t1, t2 = gc.get_threshold()
        gc.set_threshold(threshold0, t1, t2)
