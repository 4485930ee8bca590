"""Garbage-collector tuning for a serving process.

The API process holds the query encoder (torch, sentence-transformers): millions of
long-lived objects that every full (generation 2) collection walks — measured at up to 475 ms
per pause on this machine, which set the API's p99 by itself. After start-up (clients built)
:func:`freeze_startup_heap` moves everything alive into the permanent generation, which
collections skip (and the encoder's heap once it has loaded, in the background:
:func:`freeze_when_loaded`), and raises the generation-0 threshold so the short-lived
garbage of each request (parsed JSON, arrays) is collected in fewer, equally cheap passes.
Measured in-process at concurrency 4 on 20k items: p99 677 → 250 ms, p50 222 → 174 ms.
"""

from __future__ import annotations

import asyncio
import gc
from typing import Any

__all__ = ["freeze_startup_heap", "freeze_when_loaded"]


def freeze_startup_heap(threshold0: int) -> None:
    """Collect once, freeze what survives, and set the generation-0 threshold
    (``threshold0 <= 0`` keeps the interpreter's)."""
    gc.collect()
    gc.freeze()
    if threshold0 > 0:
        _, t1, t2 = gc.get_threshold()
        gc.set_threshold(threshold0, t1, t2)


def freeze_when_loaded(loading: asyncio.Future[Any]) -> None:
    """Freeze the heap again once ``loading`` (the query encoder's load, which lands after
    start-up: ``serving._encoder``) has succeeded: its heap is most of what the freeze is
    for. Without the collection first: on a process already serving it paused every request
    for 370–440 ms, and found 156 unreachable objects of the load's 473,000 (measured)."""

    def freeze(done: asyncio.Future[Any]) -> None:
        if not done.cancelled() and done.exception() is None:
            gc.freeze()

    loading.add_done_callback(freeze)
