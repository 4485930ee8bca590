"""Telling engine failures from local overload (what the circuit breaker may count).

A request that misses its deadline because the engine did not answer is an engine failure;
one that misses it because this process was busy (its event loop lagging behind, the request
doing its own CPU work, or waiting on MongoDB) is not, and must not open the breaker — at
2x saturation that turned 98% of answers into fallbacks while the engine was healthy.

* :class:`EngineWait` — per request, how long the engine has kept it waiting *right now*:
  :class:`TimedTransport` (the API's OpenSearch transport) marks every engine call of the
  request it runs in (a context variable, so the pipeline is not changed).
* :class:`LoopLag` — how late the event loop wakes up (a background sampler).

A deadline miss counts as an engine failure when an engine call of the request had been
pending for at least half the deadline, the loop was not lagging and the engine had answered
nothing at all meanwhile (:func:`engine_bound`): an engine that answers, slowly, is overloaded
— admission control's business — not failing. Errors (refused, reset, 5xx) always count.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Collection, Mapping
from contextvars import ContextVar
from typing import Any

from opendisco._transport import FailoverTransport

__all__ = ["ENGINE_WAIT", "EngineWait", "LoopLag", "TimedTransport", "engine_bound"]


class EngineWait:
    """Engine calls of one request: how many are pending, since when, the total wait, and
    the wait a cancellation (the deadline) cut short."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.pending = 0
        self.since = 0.0
        self.waited = 0.0
        self.cut = 0.0

    def enter(self) -> None:
        if self.pending == 0:
            self.since = self._clock()
        self.pending += 1

    def leave(self, cancelled: bool = False) -> None:
        self.pending = max(0, self.pending - 1)
        if self.pending == 0:
            span = self._clock() - self.since
            self.waited += span
            if cancelled:
                self.cut = span

    def current(self) -> float:
        """Seconds the engine has kept the request waiting without a break: the wait in
        progress, else the one a cancellation cut short (``asyncio.wait_for`` cancels the
        call before it reports the timeout), else 0."""
        return self._clock() - self.since if self.pending else self.cut


#: the EngineWait of the request the current task works for (None outside requests)
ENGINE_WAIT: ContextVar[EngineWait | None] = ContextVar("opendisco_engine_wait", default=None)


class TimedTransport(FailoverTransport):
    """The clients' failover transport, marking each call on the current request's EngineWait,
    and when the engine last answered any call (``last_answer``, monotonic seconds). (It was
    opensearch-py's plain transport: the API's client, alone of ours, did not fail over, and
    with a node hung it kept routing calls there — bench/ha's 0% non-degraded.)"""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.last_answer = float("-inf")

    def silent_for(self) -> float:
        """Seconds since the engine last answered a call (of any request or task)."""
        return time.monotonic() - self.last_answer

    async def perform_request(
        self,
        method: str,
        url: str,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
        timeout: int | float | None = None,
        ignore: Collection[int] = (),
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        wait = ENGINE_WAIT.get()
        if wait is not None:
            wait.enter()
        try:
            result = await super().perform_request(
                method, url, params, body, timeout, ignore, headers
            )
        except asyncio.CancelledError:
            if wait is not None:
                wait.leave(cancelled=True)
            raise
        except BaseException:
            if wait is not None:
                wait.leave()
            raise
        self.last_answer = time.monotonic()
        if wait is not None:
            wait.leave()
        return result


class LoopLag:
    """Samples how late ``asyncio.sleep(interval)`` wakes up; :meth:`recent` is the worst lag
    of the last ``window_s``."""

    def __init__(
        self,
        interval_s: float = 0.05,
        window_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval_s = interval_s
        self.window_s = window_s
        self._clock = clock
        self._samples: deque[tuple[float, float]] = deque()

    def record(self, at: float, lag: float) -> None:
        self._samples.append((at, max(0.0, lag)))
        while self._samples and self._samples[0][0] < at - self.window_s:
            self._samples.popleft()

    def recent(self) -> float:
        now = self._clock()
        return max((lag for at, lag in self._samples if at >= now - self.window_s), default=0.0)

    async def run(self) -> None:
        while True:
            t0 = self._clock()
            await asyncio.sleep(self.interval_s)
            now = self._clock()
            self.record(now, now - t0 - self.interval_s)


def engine_bound(wait: EngineWait, lag: LoopLag, deadline_s: float, silent_s: float) -> bool:
    """Was a missed deadline an engine failure? An engine call of the request pending for at
    least half the deadline, while the event loop kept up (worst recent lag under a quarter of
    it) and the engine answered no call at all for half the deadline (``silent_s``): an engine
    that answers other calls is slow — overload, which admission control sheds — not down."""
    half = deadline_s / 2
    return wait.current() >= half and lag.recent() < deadline_s / 4 and silent_s >= half
