"""Stalls seen between polling passes, and how far back a pass must read because of them.

The polling feed's overlap (``sync_overlap_seconds``) covers the lag between a write's
``updated_at`` and its commit while the store runs. A store that stalls (paused, swapping,
stopped with SIGSTOP, a failover) adds the stall to that lag: a write stamped before it
commits after it, possibly after a pass that read the writes stamped after the stall and
moved the checkpoint past the stamp plus the overlap (measured: an item marked unavailable
as FerretDB was paused for 20 s stayed served until the next reconciliation, minutes later).

The worker sees a stall as a gap between the starts of two passes (it waited on the store,
or failed and backed off). After a gap longer than the overlap, passes read from the start of
the pass before the gap, less the overlap (and the checkpoint stays there), until a pass that
began at least one overlap after the gap ended; the writes the stall held back have landed
by then. A pass that merely took long (a large batch to encode) is read as a stall too: it
costs re-reading that window for a few passes (the applied memory skips the documents).
Passes over other partitions than the last one's start afresh (a worker that takes over
partitions knows nothing of the stalls their previous holder saw: reconciliation's job).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

__all__ = ["Stalls"]


@dataclass
class Stalls:
    """One worker's pass starts and the holds they set (kept across feed resets)."""

    holds: list[tuple[datetime, datetime]] = field(default_factory=list)  # (read from, until)
    last: datetime | None = None
    partitions: tuple[int, ...] = ()

    def begin(
        self, now: datetime, overlap: timedelta, partitions: Sequence[int]
    ) -> datetime | None:
        """A pass over ``partitions`` starts at ``now``: the time its window must reach back
        to, and its checkpoint not pass (None: the checkpoints alone decide)."""
        if tuple(partitions) != self.partitions:
            self.holds, self.last, self.partitions = [], None, tuple(partitions)
        prev, self.last = self.last, now
        if prev is not None:
            # a hold ends once a pass that began after its ``until`` has read
            self.holds = [h for h in self.holds if h[1] > prev]
            if now - prev > overlap:
                self.holds.append((prev - overlap, now + overlap))
        return min((h[0] for h in self.holds), default=None)
