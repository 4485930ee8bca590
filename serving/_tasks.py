"""Futures a request starts and may stop waiting for (the feature hydrators' ``prepare``, the
live-trending refresh): cancelled when no longer needed, and a failure nobody awaits is
retrieved rather than reported by asyncio as lost."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from opendisco._cancel import retrieve

__all__ = ["retrieve", "settle"]


def settle(futures: Sequence[asyncio.Future[Any] | None]) -> None:
    """Cancel what a request started and no longer waits for (a no-op on a finished one)."""
    for fut in futures:
        if fut is not None:
            fut.cancel()
            fut.add_done_callback(retrieve)
