"""A small in-process cache with per-entry expiry: what a process may keep of a soft signal
(item vectors, item–item rows, co-engagement edges) between requests. Never for a hard rule:
those are read from their stores on every request."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["TTLCache"]


class TTLCache:
    """A small dict cache with per-entry expiry and a size bound (oldest evicted first)."""

    def __init__(
        self, ttl_s: float, max_size: int = 50_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl = ttl_s
        self.max_size = max_size
        self._clock = clock
        self._d: dict[str, tuple[float, Any]] = {}

    def get_many(self, keys: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
        now = self._clock()
        hit, miss = {}, []
        for k in keys:
            e = self._d.get(k)
            if e is not None and e[0] > now:
                hit[k] = e[1]
            else:
                miss.append(k)
        return hit, miss

    def put_many(self, values: dict[str, Any]) -> None:
        exp = self._clock() + self.ttl
        for k, v in values.items():
            self._d.pop(k, None)
            self._d[k] = (exp, v)
        while len(self._d) > self.max_size:
            self._d.pop(next(iter(self._d)))

    def clear(self) -> None:
        self._d.clear()
