"""A process's own copy of a small, per-item signal, kept current in the background.

The reranker's per-candidate signals — exposure counters (the engine), inbound attention and
the candidates' owners' tastes (MongoDB) — were read for every candidate of every request
(~500): round trips on the critical path after the candidate ``_msearch``, queued behind
other requests' work on the shared servers (p50 17–28 ms for the counters alone at
concurrency 4 on 2 cores, ``bench/api_stages.py``). A :class:`LocalCopy` makes each a dict
lookup:

* :meth:`LocalCopy.refresh` reads the rows written (a ``touched`` timestamp set by every
  writer, on the writer's clock — the exposure counters': the engine's, when it applies the
  write) since its previous read began, minus ``overlap_ms`` (the engine refreshes every
  second; a write lands some time after its clock reading);
* every ``full_every_s`` it reads them all instead and replaces the copy: rows written
  without the timestamp (by older code), a write in flight longer than the overlap, clocks
  further apart than it, deleted rows;
* with more than ``max_items`` rows it keeps no copy (memory) and readers go to the store;
* :meth:`LocalCopy.rows` hands the copy out only while it is fresh — its last successful
  read began at most ``stale_s`` ago — so a reader falls back to the store before the first
  read and while the store refuses.

What a stale copy can change: features, by at most ``stale_s`` of writes. Never eligibility:
the hard rules (caps, blocks, seen, preferences) are read from their stores on every request;
the exposure counters' copy only adds to them (``ExposureMirror.known``: a cap this process
knows was reached), stale or not.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Generic, Protocol, TypeVar

from opendisco._cancel import raise_lost_cancel

from ._trending import epoch_ms

__all__ = ["CopySource", "LocalCopy"]

log = logging.getLogger("opendisco.signals")

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


class CopySource(Protocol[T_co]):
    """Where a copy's rows come from (engine or store I/O)."""

    what: str

    async def scan(
        self, touched_since_ms: int | None, *, limit: int | None = None
    ) -> Mapping[str, T_co] | None:
        """Rows by item id: all of them (``touched_since_ms`` None; ``None`` when there are
        more than ``limit``), or those written at or after ``touched_since_ms``."""
        ...


class LocalCopy(Generic[T]):
    """Rows of one :class:`CopySource`, refreshed by :meth:`run`."""

    def __init__(
        self,
        source: CopySource[T],
        *,
        every_s: float,
        max_items: int,
        overlap_ms: int = 3_000,
        full_every_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self.every_s = every_s
        self.max_items = max_items
        self.overlap_ms = overlap_ms
        self.full_every_s = full_every_s
        #: the copy answers only if its last successful read began at most this long ago
        self.stale_s = max(5 * every_s, 5.0)
        self._clock = clock
        self._rows: dict[str, T] | None = None
        self._since_ms = 0  # the writers' clock when the last successful read began
        self._fresh_at = float("-inf")  # this process's clock, same moment
        self._full_at = float("-inf")  # when the last full read (or size check) began

    @property
    def items(self) -> int | None:
        """Rows in the copy (``None``: no copy)."""
        return None if self._rows is None else len(self._rows)

    def fresh(self) -> bool:
        return self._rows is not None and self._clock() - self._fresh_at <= self.stale_s

    def last_rows(self) -> Mapping[str, T] | None:
        """The copy as its last successful read left it, fresh or not (``None``: no copy)."""
        return self._rows

    def rows(self) -> Mapping[str, T] | None:
        """The copy while it is fresh (an id without a row has none in the store either),
        else ``None``: read the store."""
        return self._rows if self.fresh() else None

    async def refresh(self, now: datetime | None = None) -> None:
        """One read: what changed since the last one, or everything when a full read is due."""
        began, began_ms = self._clock(), epoch_ms(now or datetime.now(UTC))
        if began - self._full_at >= self.full_every_s:
            got = await self.source.scan(None, limit=self.max_items)
            self._rows = None if got is None else dict(got)
            self._full_at = began
            if got is None:
                log.info("%s: over %d rows, no copy kept", self.source.what, self.max_items)
        elif self._rows is not None:
            self._rows.update(await self.source.scan(self._since_ms - self.overlap_ms) or {})
        self._since_ms, self._fresh_at = began_ms, began

    async def run(self) -> None:
        """Refresh every ``every_s`` forever (a background task); a failed read leaves the
        copy to go stale, when readers fall back to the store."""
        failing = False
        while True:
            try:
                await self.refresh()
                if failing:
                    log.info("%s copy refreshed again", self.source.what)
                failing = False
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the loop must outlive any failure
                # once per outage at warning level, not once per second
                log.log(logging.DEBUG if failing else logging.WARNING,
                        "%s copy not refreshed: %r", self.source.what, exc)  # fmt: skip
                failing = True
            raise_lost_cancel()
            await asyncio.sleep(self.every_s)
