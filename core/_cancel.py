"""Cancellation that an await swallowed, raised again; background tasks stopped for good.

On Python 3.11 ``asyncio.wait_for`` returns its result when the cancel lands as the awaited
operation completes (gh-86296, fixed in 3.12), and the MongoDB driver awaits through it; the
driver also answers a cancelled operation whose connection fails with its own error. Either
way the task's cancellation is consumed while the task still counts it
(``Task.cancelling()``), and a loop around the call went on: its next ``asyncio.sleep`` is
not cancelled. Each loop that retries around a driver call raises such a cancel itself
(:func:`raise_lost_cancel`) before it waits; a process stopping its background tasks cancels
each again until it ends (:func:`stop_tasks`); a step given a time budget is waited for, then
stopped the same way (:func:`bounded`), not cut with ``wait_for``, which waits for the
cancelled step to end — as long as a swallowed cancel lets it run on.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

__all__ = ["bounded", "in_daemon_thread", "raise_lost_cancel", "retrieve", "stop_tasks"]

T = TypeVar("T")


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


async def bounded(step: Awaitable[T], timeout_s: float, stop_s: float = 1.0) -> T:
    """The result of ``step`` (a coroutine or future) when it ends within ``timeout_s``; else
    it is stopped (:func:`stop_tasks`, up to ``stop_s``) and :class:`TimeoutError` raised.
    ``asyncio.wait_for`` on 3.11 waits for the cancelled step to end instead: a shutdown's
    drain whose write swallowed the cancel went on past its budget (see the module)."""
    task = asyncio.ensure_future(step)
    try:
        await asyncio.wait([task], timeout=timeout_s)
    finally:  # also when this caller is cancelled: the step does not outlive it
        if not task.done():
            await stop_tasks([task], stop_s)
    if not task.done() or task.cancelled():  # one still going past ``stop_s`` is left cancelled
        raise TimeoutError(f"cut short after {timeout_s:g} s")
    return task.result()


async def in_daemon_thread(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in a thread of its own that the process's exit does not wait for (unlike
    ``asyncio.to_thread``: the default executor's threads are joined when ``asyncio.run``
    ends and again at exit). For a long call whose result a cancelled caller no longer needs:
    the encoder's load, ~9 s, held the exit of an API process stopped while it started."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, exc: BaseException | None) -> None:
        if done.done():  # the caller was cancelled meanwhile
            return
        if exc is not None:
            done.set_exception(exc)
        else:
            done.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        try:
            result, exc = fn(*args), None
        except BaseException as e:  # handed to the caller
            result, exc = None, e
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            loop.call_soon_threadsafe(settle, result, exc)

    threading.Thread(target=run, name=getattr(fn, "__name__", "call"), daemon=True).start()
    return await done


def retrieve(fut: asyncio.Future[Any]) -> None:
    """Done callback: a failure nobody awaits is retrieved here (not logged as lost)."""
    if not fut.cancelled():
        fut.exception()
