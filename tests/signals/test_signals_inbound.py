"""Inbound attention counters: one document per item with day keys (pure update shapes, live
counts, windows and pruning on the real store)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from opendisco import StoreBackendError
from opendisco.signals import INBOUND, InboundCounter
from opendisco.signals._inbound import (
    PRUNE_DAYS,
    RETAIN_DAYS,
    increments,
    window_keys,
    window_total,
)
from opendisco.signals._store_fence import FENCE_KEPT

NOW = datetime(2026, 6, 30, 12, tzinfo=UTC)


def _days_ago(d: float) -> datetime:
    return NOW - timedelta(days=d)


def test_increments_are_one_update_per_item_with_day_keys() -> None:
    ups = increments(
        [("a", _days_ago(0)), ("a", _days_ago(0)), ("a", _days_ago(2)), ("b", _days_ago(1))],
        NOW,
    )
    assert set(ups) == {"a", "b"}
    assert ups["a"]["$inc"] == {"d.20260630": 2, "d.20260628": 1}
    assert ups["a"]["$max"] == {"last": "20260630"} and ups["b"]["$max"] == {"last": "20260629"}
    # the keys just past the horizon are dropped, never one being incremented
    stale = set(ups["a"]["$unset"])
    assert len(stale) == PRUNE_DAYS and not stale & set(ups["a"]["$inc"])
    assert max(stale) == "d." + (NOW - timedelta(days=RETAIN_DAYS)).strftime("%Y%m%d")


def test_events_past_the_horizon_are_dropped() -> None:
    assert increments([("a", _days_ago(RETAIN_DAYS + 1))], NOW) == {}
    assert set(increments([("a", _days_ago(RETAIN_DAYS - 1))], NOW)) == {"a"}


def test_window_keys_and_totals() -> None:
    keys = window_keys(3, NOW)
    assert keys == ["20260630", "20260629", "20260628"]
    doc = {"d": {"20260630": 2, "20260628": 1, "20260601": 9}}
    assert window_total(doc, keys) == 3
    assert window_total({}, keys) == 0
    for bad in (0, RETAIN_DAYS + 1):
        with pytest.raises(ValueError, match="inbound window"):
            window_keys(bad, NOW)


async def test_counts_totals_and_pruning_on_the_store(async_db: Any) -> None:
    counter = InboundCounter(async_db)
    tag = uuid.uuid4().hex[:8]
    a, b, c = (f"{x}-{tag}" for x in "abc")
    await counter.add([(a, _days_ago(0)), (a, _days_ago(1)), (a, _days_ago(6)), (b, NOW)], NOW)
    await counter.add([(a, _days_ago(0)), (b, _days_ago(10))], NOW)  # a second batch adds up
    assert await counter.counts([a, b, c], days=7, now=NOW) == {a: 4, b: 1}
    assert await counter.counts([a, b], days=1, now=NOW) == {a: 2, b: 1}
    assert await counter.counts([a, b], days=14, now=NOW) == {a: 4, b: 2}
    totals = await counter.totals(days=7, now=NOW)
    assert totals[a] == 4 and totals[b] == 1 and c not in totals
    # weeks later: an increment drops the day keys past the horizon; the window is still right
    later = NOW + timedelta(days=RETAIN_DAYS + 3)
    await counter.add([(a, later)], later)
    doc = await async_db[INBOUND].find_one({"_id": a})
    assert sorted(doc["d"]) == [later.strftime("%Y%m%d")]
    assert await counter.counts([a, b], days=7, now=later) == {a: 1}
    assert a in await counter.totals(days=7, now=later)
    assert b not in await counter.totals(days=7, now=later)  # its last day left the window


async def test_concurrent_increments_of_one_item_all_count(async_db: Any) -> None:
    """Four writers (API processes) adding likes of one profile at once: on FerretDB 1.x,
    whose updates rewrite the whole document, most concurrent ``$inc`` were lost (134 of 400);
    every one counts (leases where updates are not atomic)."""
    tag = uuid.uuid4().hex[:8]
    item = f"hot-{tag}"

    async def writer(k: int) -> None:
        counter = InboundCounter(async_db)
        for i in range(15):
            await counter.add([(item, NOW), (f"{k}-{i}-{tag}", NOW)], NOW)

    await asyncio.gather(*(writer(k) for k in range(4)))
    assert await InboundCounter(async_db).counts([item], days=7, now=NOW) == {item: 60}


async def test_a_fenced_write_never_counts_and_a_landed_one_is_told(async_db: Any) -> None:
    """:meth:`InboundCounter.fence` settles a marked write: landed (told, left as it is) or
    fenced (the write, should it arrive later, is refused); asked again, the same answer. A
    fenced mark is dropped by a later fence once older than ``FENCE_KEPT``; a counter written
    without marks (before them) counts a marked write."""
    counter = InboundCounter(async_db)
    tag = uuid.uuid4().hex[:6]
    a, b, c = f"fa{tag}", f"fb{tag}", f"fc{tag}"
    m = "0123456789ab"
    await counter.add([(a, NOW)], NOW, mark=m)  # landed on a only
    assert await counter.fence([a, b], m, NOW) == {a}
    assert await counter.fence([a, b], m, NOW) == {a}
    with pytest.raises(StoreBackendError, match="refused"):  # the same write, late: refused
        await counter.add([(a, NOW), (b, NOW)], NOW, mark=m)
    assert await counter.counts([a, b], 1, NOW) == {a: 1}
    later = NOW + FENCE_KEPT + timedelta(minutes=1)
    assert await counter.fence([b], "ba9876543210", later) == set()
    assert set((await async_db[INBOUND].find_one({"_id": b}))["fz"]) == {"ba9876543210"}
    await counter.add([(c, NOW)], NOW)
    await counter.add([(c, NOW)], NOW, mark=m)
    assert await counter.counts([c], 1, NOW) == {c: 2}
