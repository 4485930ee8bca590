"""Per-key token buckets (pure; the clock is injected)."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["RateLimiter", "TokenBucket"]


@dataclass
class TokenBucket:
    """``rate`` tokens per second up to ``burst``; :meth:`take` returns the wait (0 = allowed)."""

    rate: float
    burst: float
    tokens: float
    updated: float

    @classmethod
    def full(cls, rate: float, burst: float, now: float) -> TokenBucket:
        return cls(rate=rate, burst=burst, tokens=burst, updated=now)

    def retune(self, rate: float, burst: float, now: float) -> None:
        """A new rate and burst from ``now`` on, keeping the tokens earned so far (capped)."""
        self.take(now, cost=0.0)
        self.rate, self.burst = rate, burst
        self.tokens = min(self.tokens, burst)

    def take(self, now: float, cost: float = 1.0) -> float:
        elapsed = max(0.0, now - self.updated)
        self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
        self.updated = now
        if self.tokens >= cost:
            self.tokens -= cost
            return 0.0
        return (cost - self.tokens) / self.rate


class RateLimiter:
    """One bucket per key id (LRU-bounded); per-key rates override the default.

    A key with its own rate gets a burst scaled by the same factor (``burst * rate /
    default rate``, at least 1), so the burst always lasts the same number of seconds.
    ``share`` (0..1] is the part of the key's rate this process may grant when several
    processes serve one key (``_ratesync``): rate and burst are scaled by it, and a changed
    share retunes the bucket without refilling it.
    """

    def __init__(
        self,
        rate: float,
        burst: float,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 100_000,
    ) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._max = max_keys
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def take(self, key_id: str, rate: float | None = None, share: float = 1.0) -> float:
        """Seconds until ``key_id`` may retry; 0.0 when this request is allowed."""
        now = self._clock()
        rate = rate or self.rate
        burst = max(1.0, self.burst * rate / self.rate * share)
        rate *= share
        bucket = self._buckets.get(key_id)
        if bucket is None:
            bucket = TokenBucket.full(rate, burst, now)
            self._buckets[key_id] = bucket
            if len(self._buckets) > self._max:
                self._buckets.popitem(last=False)
        else:
            if bucket.rate != rate or bucket.burst != burst:
                bucket.retune(rate, burst, now)
            self._buckets.move_to_end(key_id)
        return bucket.take(now)
