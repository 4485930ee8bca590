"""Futures a request starts and may stop waiting for (the feature hydrators' ``prepare``, the
live-trending refresh): cancelled when no longer needed, and a failure nobody awaits is
retrieved rather than reported by asyncio as lost."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

__all__ = ["retrieve", "settle"]


def retrieve(fut: asyncio.Future[Any]) -> None:
    """Done callback: a failure nobody awaits is retrieved here (not logged as lost)."""
    if not fut.cancelled():
        fut.exception()


def settle(futures: Sequence[asyncio.Future[Any] | None]) -> None:
    """Cancel what a request started and no longer waits for (a no-op on a finished one)."""
    for fut in futures:
        if fut is not None:
            fut.cancel()
            fut.add_done_callback(retrieve)
