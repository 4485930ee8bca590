"""An item's exposure cap, and the impressions a process knows it has had: the one rule for
which cap applies (the counters' flush, the served page, the degraded fallback) and the one
definition of "known impressions reach the cap" (:class:`KnownImpressions`), which the served
pipeline (over the process's copy of the counters, ``ExposureMirror.known``) and the degraded
fallback (over its snapshot's counts) both check.

What a process knows of an item's impressions is a lower bound of what it has had: its counter
as one read of the counters saw it (in the item's current window), plus what this process
served since, or held unwritten then, or wrote too shortly before for the read to show it
(``ServedExposure.served_since`` of the window opened just before that read). Other processes'
impressions since that read, not flushed or not read yet, are not in it: across processes a
cap is enforced by the engine's cap list (``_capped``), updated at each flush. An item whose
window ended after the read counts from 0 plus all this process served since the read, some
of it in the window that ended: an error on the safe side (left out early, never past the
cap), as long as the read is recent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["KnownImpressions", "ServedSince", "item_cap", "window_count"]


def item_cap(own: Any, default: int) -> int:
    """Pure: the item's own ``exposure_cap`` when it is a positive integer (a whole double
    too, as MongoDB may store it and ingest indexes it), else ``default``
    (``exposure_default_cap``)."""
    if isinstance(own, float) and own.is_integer():
        own = int(own)
    return own if isinstance(own, int) and own > 0 else default


def window_count(count: Any, window_start: Any, now_ms: int, window_ms: int) -> int:
    """Pure: a counter's impressions in its current window at ``now_ms``: 0 once the window
    ``window_start`` opened has ended (the next impression opens a new one, from 0). A window
    that opened after ``now_ms`` (its writer's clock ahead of this one) is current: read as
    ended, its impressions were forgotten by the cap check until this clock caught up."""
    age = now_ms - int(window_start or 0)
    return int(count or 0) if age < window_ms else 0


class ServedSince(Protocol):
    """What a process served that a read of the counters cannot hold
    (:meth:`~opendisco.signals.ServedExposure.served_since`)."""

    def served_since(self, item_id: str, generation: int) -> int: ...


@dataclass(frozen=True)
class KnownImpressions:
    """The impressions this process knows each item has had in its window (see the module
    docstring): ``counted(id)`` as one read of the counters saw them, plus
    ``served.served_since(id, window)``, ``window`` being the generation opened just before
    that read (0 or a generation no longer kept: what is unwritten, or written too recently
    to be read, now)."""

    counted: Callable[[str], int]
    served: ServedSince
    window: int
    default_cap: int  # ``exposure_default_cap``
    #: ids this process counted to their cap whose cap-list update failed
    #: (``ExposureStore.known_capped``): at their cap whatever the counts read say — once
    #: this process's own written impressions are older than a read can miss, and with no
    #: copy of the counters, nothing else here remembers them until the list is updated
    capped: frozenset[str] = frozenset()

    def of(self, item_id: str) -> int:
        return self.counted(item_id) + self.served.served_since(item_id, self.window)

    def reached(self, items: Iterable[tuple[str, Any]]) -> set[str]:
        """The ids, of ``(id, the item's own exposure_cap)`` pairs, whose known impressions
        reach the item's cap (:func:`item_cap`): never to be shown by this process."""
        default, capped = self.default_cap, self.capped
        return {i for i, own in items if i in capped or self.of(i) >= item_cap(own, default)}
