"""The one definition of "known impressions reach the cap" (``signals._caps``) and the served
impressions' windows behind it (``ServedExposure.open_window``), pure: an in-memory counter
store stands in for the engine (what the engine keeps is tested live in
``test_signals_exposure_mirror`` and ``tests/api/test_api_caps``)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from signals_support import Clock

from opendisco.signals import KnownImpressions, ServedExposure
from opendisco.signals._caps import window_count

HOUR_MS = 3_600_000


class _Counters:
    """An in-memory stand-in for :meth:`ExposureStore.record` (the flush's only call)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    async def record(self, counts: Mapping[str, int], **_: Any) -> list[str]:
        self.counts.update(counts)
        return []


def _served(clock: Clock) -> tuple[ServedExposure, _Counters]:
    store = _Counters()
    return ServedExposure(store, 3600.0, clock=clock), store  # type: ignore[arg-type]


def test_a_counter_counts_in_its_window_only() -> None:
    start = 10 * HOUR_MS
    assert window_count(5, start, start + HOUR_MS, 24 * HOUR_MS) == 5
    assert window_count(5, str(start), start, 24 * HOUR_MS) == 5  # doc values: a string
    assert window_count(5, start, start + 24 * HOUR_MS, 24 * HOUR_MS) == 0  # ended
    assert window_count(None, None, start, 24 * HOUR_MS) == 0
    # opened by a writer whose clock is ahead of this one: the current window, not an ended one
    assert window_count(5, start + 2_000, start, 24 * HOUR_MS) == 5


async def test_known_impressions_reach_the_cap() -> None:
    """The counters as read + what this process served since: at the item's own cap, else
    the default; never counted twice across readers, never lost when another reads."""
    clock = Clock()
    served, _ = _served(clock)
    read = {"a": 2, "b": 2, "c": 199}
    window = served.open_window("mirror")  # just before the read
    known = KnownImpressions(lambda i: read.get(i, 0), served, window, default_cap=200)
    items = [("a", 3), ("b", None), ("c", None), ("d", 1)]
    assert known.reached(items) == set()
    served.add(["a", "c"])
    assert known.reached(items) == {"a", "c"}  # 2 + 1 >= 3; 199 + 1 >= 200 (the default)
    served.add(["d"])
    assert "d" in known.reached(items)  # no count read: its own impressions alone
    assert known.reached([("a", 0), ("a", "3"), ("a", 4)]) == set()  # odd caps: the default
    assert known.reached([("a", 3.0)]) == {"a"}  # a whole double, as MongoDB may store it
    # another reader's windows (the fallback's) leave this one's alone
    for _ in range(3):
        served.open_window("fallback")
    assert known.of("a") == 3
    # a read that failed: its window closed, the one before still holds what it must
    failed = served.open_window("mirror")
    served.close_window(failed)
    served.add(["a"])
    assert known.of("a") == 4


async def test_a_window_holds_what_was_written_too_recently_to_be_read() -> None:
    """A count written just before a read of doc values may not show in it (the index
    refreshes every second): the window opened then holds it for ``visible_s``, so it is
    counted twice for a few seconds, never missed."""
    clock = Clock()
    served, store = _served(clock)
    served.add(["a", "a"])
    await served.flush(pace=False)
    assert store.counts["a"] == 2 and served.unwritten("a") == 0
    window = served.open_window("mirror")  # a read begins: it may show 0 or 2
    assert served.served_since("a", window) == 2
    assert served.served_since("a", 12345) == 2  # no window kept: unread now
    clock.t += served.visible_s + 0.1
    assert served.served_since("a", window) == 2  # the window keeps what it opened with
    assert served.served_since("a", served.open_window("mirror")) == 0  # shown by a read now


async def test_an_id_whose_cap_list_update_failed_is_at_its_cap_whatever_was_read() -> None:
    clock = Clock()
    served, _ = _served(clock)
    known = KnownImpressions(lambda _: 0, served, 0, default_cap=200, capped=frozenset({"a"}))
    assert known.reached([("a", 3), ("b", 3), ("a", None)]) == {"a"}
