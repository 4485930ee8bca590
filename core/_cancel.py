"""Cancellation that an await swallowed, raised again; background tasks stopped for good.

On Python 3.11 ``asyncio.wait_for`` returns its result when the cancel lands as the awaited
operation completes (gh-86296, fixed in 3.12), and the MongoDB driver awaits through it; the
driver also answers a cancelled operation whose connection fails with its own error. Either
way the task's cancellation is consumed while the task still counts it
(``Task.cancelling()``), and a loop around the call went on: its next ``asyncio.sleep`` is
not cancelled. Each loop that retries around a driver call raises such a cancel itself
(:func:`raise_lost_cancel`) before it waits; a process stopping its background tasks cancels
each again until it ends (:func:`stop_tasks`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

__all__ = ["raise_lost_cancel", "stop_tasks"]


def raise_lost_cancel() -> None:
    """Raise the cancellation of this task when an await swallowed it (see the module). A
    waiter for a lease kept polling, cancelled, for its whole ``wait_s`` (a playground job
    cancelled at shutdown: up to an hour; seen in CI)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def stop_tasks(tasks: Iterable[asyncio.Future[Any]], timeout_s: float = 5.0) -> set[Any]:
    """Cancel ``tasks`` and wait up to ``timeout_s`` for them to end, cancelling again each
    that goes on; returns those still running. The MongoDB driver can swallow a cancellation
    (see the module): a background loop cancelled once then ran on after shutdown, on closed
    clients, for as long as the process lived."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    pending: set[Any] = {t for t in tasks if not t.done()}
    while pending:
        for task in pending:
            task.cancel()
        left = deadline - loop.time()
        if left <= 0:
            break
        _, pending = await asyncio.wait(pending, timeout=min(0.2, left))
    return pending
