"""Served lists for the served-list log's tests (a module at the top of ``tests/``, importable
from every suite, like ``tcp_faults``): a list of three rows, and a wait on a condition."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime

import numpy as np

from opendisco.rerank import FEATURE_NAMES
from opendisco.signals import ServedList

__all__ = ["served_list", "until"]


def served_list(rid: str, degraded: bool = True) -> ServedList:
    """A list of three candidates, all shown, with distinct feature values."""
    return ServedList(
        request_id=rid,
        at=datetime.now(UTC),
        user_id="u1",
        surface="for_you",
        requested_surface="for_you",
        version="v",
        degraded=degraded,
        k=3,
        feature_names=FEATURE_NAMES,
        X=np.arange(3 * len(FEATURE_NAMES), dtype=np.float64).reshape(3, -1),
        ids=["a", "b", "c"],
        shown=[0, 1, 2],
        propensity=[1.0] * 3,
    )


async def until(what: Callable[[], bool], timeout: float = 90.0) -> None:
    """Wait until ``what()`` holds, polling every 50 ms; fail after ``timeout`` s."""
    end = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < end, "timed out"
        await asyncio.sleep(0.05)
