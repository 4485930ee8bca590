"""Admission control: bounded work, a short FIFO queue bounded by time, shedding past it.

At most ``limit`` requests work at once, so admitted work is never slowed by local queueing
(the cause of overload collapse: requests that time out while waiting behind each other).
Up to ``max_queue`` more wait in arrival order, each at most ``max_wait_s``; a request that
finds the queue full or waits longer is shed (the caller answers 503 + Retry-After) before
any work starts. The per-request deadline starts after admission, so time spent queueing here
never counts against the engine.

The limit is sized to measured capacity: with ``target_s`` set it adapts (AIMD on service
time, the scheme of Netflix's concurrency-limits, judged on a moving average so one slow
request does not halve it): while the average service time is within ``target_s`` each
completed request raises the limit by ``1/limit`` (about +1 per limit's worth of requests),
above it each multiplies it by ``backoff``; it stays within ``[min_limit, max_limit]``. By
Little's law a process serving ``S`` answers/s keeps ``limit / S`` seconds of work in flight,
so the limit settles where answers take about ``target_s``, whatever the machine can do now.
"""

from __future__ import annotations

import asyncio
from collections import deque

__all__ = ["Admission"]


class Admission:
    def __init__(
        self,
        limit: int,
        max_wait_s: float = 0.2,
        max_queue: int = 64,
        *,
        target_s: float | None = None,
        min_limit: int = 1,
        backoff: float = 0.9,
        smoothing: float = 0.2,
    ) -> None:
        if limit < 1 or max_wait_s < 0 or max_queue < 0 or not 1 <= min_limit <= limit:
            raise ValueError("limit >= min_limit >= 1, max_wait_s >= 0, max_queue >= 0")
        if not 0 < backoff < 1 or (target_s is not None and target_s <= 0):
            raise ValueError("0 < backoff < 1, target_s > 0")
        self.max_limit = limit
        self.min_limit = min_limit
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.target_s = target_s
        self.backoff = backoff
        self.smoothing = smoothing
        self.service_s: float | None = None  # moving average of admitted service times
        self._limit = float(limit)
        self.in_flight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def limit(self) -> int:
        """Requests admitted at once now (the adaptive limit, rounded down)."""
        return max(self.min_limit, int(self._limit))

    @property
    def waiting(self) -> int:
        return sum(not f.done() for f in self._waiters)

    async def acquire(self) -> bool:
        """Take a slot (True), or be shed (False) when the queue is full or the wait is over."""
        if self.in_flight < self.limit and not self.waiting:
            self.in_flight += 1
            return True
        if self.waiting >= self.max_queue or self.max_wait_s == 0:
            return False
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await asyncio.wait_for(asyncio.shield(fut), self.max_wait_s)
        except TimeoutError:
            pass
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():  # handed a slot as we were cancelled
                self.release()
            fut.cancel()
            raise
        if fut.done() and not fut.cancelled():
            return True  # release() admitted it (and counted it in flight)
        fut.cancel()
        if fut in self._waiters:
            self._waiters.remove(fut)
        return False

    def observe(self, service_s: float) -> None:
        """Adapt the limit to one admitted request's service time (no-op without target)."""
        if self.target_s is None:
            return
        avg = self.service_s
        avg = service_s if avg is None else avg + self.smoothing * (service_s - avg)
        self.service_s = avg
        if avg > self.target_s:
            self._limit = max(float(self.min_limit), self._limit * self.backoff)
        else:
            self._limit = min(float(self.max_limit), self._limit + 1.0 / self._limit)

    def release(self) -> None:
        """Free a slot; waiters are admitted in arrival order while under the limit (a
        lowered limit drains through releases)."""
        self.in_flight = max(0, self.in_flight - 1)
        while self.in_flight < self.limit and self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                self.in_flight += 1
