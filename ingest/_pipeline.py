"""Bounded concurrency for builds and sync: read ahead, prepare one batch, N bulks in flight.

A batch moves through three stages: read from MongoDB (one cursor, one batch ahead), prepared
in a thread (validate, embed, encode the actions), written by a bulk task. ``Pipeline``
keeps at most ``concurrency`` bulk tasks in flight and finishes them **in submission order**,
so a caller's ``on_done`` (sync commits its checkpoint there) sees batch k only after every
batch before it was acknowledged. Reordering between in-flight bulks is safe because every
write carries the document's external version: the highest version wins whatever the order.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Generic, TypeVar

from ._apply import Counters

__all__ = ["Pipeline", "read_ahead"]

T = TypeVar("T")


async def read_ahead(batches: AsyncIterator[T]) -> AsyncIterator[T]:
    """``batches`` with the next one already being read while the caller works on this one.

    A read in progress is awaited (not cancelled) when the caller stops early, so the
    cursor behind ``batches`` is never closed under a running ``getMore``.
    """
    it = aiter(batches)
    nxt: asyncio.Future[T | None] = asyncio.ensure_future(anext(it, None))
    try:
        while True:
            batch = await nxt
            if batch is None:
                return
            nxt = asyncio.ensure_future(anext(it, None))
            yield batch
    finally:
        if not nxt.done():
            with contextlib.suppress(Exception):
                await nxt


class Pipeline(Generic[T]):
    """Up to ``concurrency`` write tasks in flight, finished in submission order.

    ``async with Pipeline(2, on_done) as pipe: await pipe.submit(tag, lambda: write(...))``;
    leaving the block normally drains every task; leaving it with an error cancels the tasks
    still in flight (their batches were not acknowledged, so no ``on_done`` runs for them).
    """

    def __init__(
        self,
        concurrency: int,
        on_done: Callable[[T, Counters], Awaitable[None]] | None = None,
    ) -> None:
        self.concurrency = max(1, concurrency)
        self.on_done = on_done
        self.counters = Counters()
        self.batches = 0
        self._inflight: deque[tuple[T, asyncio.Task[Counters]]] = deque()

    async def submit(self, tag: T, write: Callable[[], Awaitable[Counters]]) -> None:
        while len(self._inflight) >= self.concurrency:
            await self._finish_oldest()
        self._inflight.append((tag, asyncio.ensure_future(write())))

    async def drain(self) -> None:
        """Wait for every write in flight (a barrier: hard deletes read versions after it)."""
        while self._inflight:
            await self._finish_oldest()

    async def _finish_oldest(self) -> None:
        tag, task = self._inflight[0]
        try:
            counters = await task
        finally:
            if task.done():
                self._inflight.popleft()
        self.counters.add(counters)
        self.batches += 1
        if self.on_done is not None:
            await self.on_done(tag, counters)

    async def __aenter__(self) -> Pipeline[T]:
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            try:
                await self.drain()
            except BaseException:
                await self._cancel()
                raise
            return
        await self._cancel()

    async def _cancel(self) -> None:
        tasks = [task for _, task in self._inflight]
        self._inflight.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
