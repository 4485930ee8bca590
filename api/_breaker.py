"""A circuit breaker as a pure state machine (the clock is injected).

``closed`` --(``failure_threshold`` consecutive failures)--> ``open``
``open`` --(``reset_timeout`` elapsed, next :meth:`allow`)--> ``half_open``
``half_open``: at most ``half_open_max`` probes in flight; a success closes, a failure re-opens.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import StrEnum

__all__ = ["BreakerState", "CircuitBreaker"]


class BreakerState(StrEnum):
    CLOSED = "closed"
    HALF_OPEN = "half_open"
    OPEN = "open"

    @property
    def gauge(self) -> int:
        return {"closed": 0, "half_open": 1, "open": 2}[self.value]


class CircuitBreaker:
    def __init__(
        self,
        failure_threshold: int = 5,
        reset_timeout: float = 5.0,
        half_open_max: int = 1,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[BreakerState, BreakerState], None] | None = None,
    ) -> None:
        if failure_threshold < 1 or reset_timeout <= 0 or half_open_max < 1:
            raise ValueError("failure_threshold>=1, reset_timeout>0, half_open_max>=1")
        self.failure_threshold = failure_threshold
        self.reset_timeout = reset_timeout
        self.half_open_max = half_open_max
        self._clock = clock
        self._on_change = on_change
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probes = 0

    @property
    def state(self) -> BreakerState:
        return self._state

    @property
    def failures(self) -> int:
        return self._failures

    def retry_after(self) -> float:
        """Seconds until an open breaker lets a probe through (0 unless open)."""
        if self._state is not BreakerState.OPEN:
            return 0.0
        return max(0.0, self._opened_at + self.reset_timeout - self._clock())

    def _move(self, new: BreakerState) -> None:
        old, self._state = self._state, new
        if old is not new and self._on_change is not None:
            self._on_change(old, new)

    def allow(self) -> bool:
        """May a call go to the backend now? (Takes a probe slot when half-open.)"""
        if self._state is BreakerState.CLOSED:
            return True
        if self._state is BreakerState.OPEN:
            if self._clock() - self._opened_at < self.reset_timeout:
                return False
            self._probes = 0
            self._move(BreakerState.HALF_OPEN)
        if self._probes < self.half_open_max:
            self._probes += 1
            return True
        return False

    def record_success(self) -> None:
        self._failures = 0
        if self._state is BreakerState.HALF_OPEN:
            self._probes = 0
            self._move(BreakerState.CLOSED)

    def record_failure(self) -> None:
        self._failures += 1
        if self._state is BreakerState.HALF_OPEN or (
            self._state is BreakerState.CLOSED and self._failures >= self.failure_threshold
        ):
            self._opened_at = self._clock()
            self._probes = 0
            self._move(BreakerState.OPEN)

    def release(self) -> None:
        """An allowed call ended with neither verdict (e.g. cancelled): free its probe slot."""
        if self._state is BreakerState.HALF_OPEN and self._probes > 0:
            self._probes -= 1
