"""A claim update lost to a concurrent one, on the real servers: FerretDB 1.x applies an update
as read, change, write back, so of two concurrent updates of one event document the one
written last drops the other's change (measured here: 20 events updated by two concurrent
``update_many`` 30 times, 574 of the 600 changes lost). A holder giving its claims up (a
failed call's release, retried in the background until the engine answers) while another
takes them over can so write back the event as it was before the take-over: the taker's
ownership and its mark are gone from the event, and the call taking the events over after it
must still fence the taker's counter writes, not count them a second time."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest
from http_faults import FaultyHttpProxy
from pymongo import ReplaceOne
from test_signals_claims_faults import _batch, processors, storm, storm_settings
from test_signals_claims_live import _assert_exact, _Counters

from opendisco import SearchBackendError, Settings
from opendisco.signals import EVENTS, EventClaims

__all__ = ["storm", "storm_settings"]  # the fixtures, shared with the claims-fault suite

#: the claims' lease here: the taker's generation lapses within the test
LEASE_S = 2.0


async def test_a_release_concurrent_with_a_take_over_in_one_process_keeps_the_takers_claim(
    async_db: Any,
) -> None:
    """A failed call's release (retried in the background) and another call's take-over of
    the same events run at once in one process: the events end up the taker's, with its mark
    (each update of the events waits for the other; the arbiters keep the marks whatever
    the order). Without that, FerretDB dropped the taker's change on 84 of 200 events."""
    claims = EventClaims(async_db, lease_s=30.0)
    for _ in range(5):
        ids = [uuid.uuid4().hex for _ in range(20)]
        about = {"type": "impression", "user_id": "u", "item_id": "x"}
        await claims.insert(claims.stamp([{"_id": i, **about} for i in ids], "A", "mA"))
        await claims.release(ids, "A")  # given up: expired
        won, _ = await asyncio.gather(
            claims.take_over(dict.fromkeys(ids, 0), "B", "mB"),
            claims.release(ids, "A", ["exposure"]),  # its retry, with what it found landed
        )
        assert won == set(ids)
        docs = await async_db[EVENTS].find({"_id": {"$in": ids}}).to_list(None)
        assert {d["claim_owner"] for d in docs} == {"B"}
        status = await claims.taken(ids)
        assert all({"mA", "mB"} <= st.marks for st in status.values())


def _bulks(method: str, path: str) -> bool:
    return path.rstrip("/").endswith("_bulk")


async def test_a_takers_claim_written_over_by_a_stale_update_still_counts_once(
    storm: tuple[FaultyHttpProxy, Settings],
) -> None:
    """Worker A's call fails (every counters ``_bulk`` refused) and gives the claims up; B
    takes the events over, and while its counter writes are on their way the events are
    written back as A's release read them (the lost update: A's ownership, A's mark only).
    B's writes land, its records and its mark find the events not B's: B must not take them
    over again and count them a second time, and the client's retry after B's generation
    lapsed must fence B's writes (landed: not added again)."""
    proxy, s = storm
    s = s.model_copy(update={"events_claim_lease_s": LEASE_S, "events_claim_wait_s": 0.5})
    async with processors(s, 2) as ([a, b], db):
        counters = _Counters(a, db)
        batch = _batch()
        ids = [e["id"] for e in batch]
        before = await counters.read()
        proxy.fail_if = _bulks  # 429: refused, nothing applied
        with pytest.raises(SearchBackendError):
            await a.apply(batch)
        proxy.fail_if = None
        stale = await db[EVENTS].find({"_id": {"$in": ids}}).to_list(None)  # as A read them
        assert all(d["claim_expires"].timestamp() == 0 for d in stale)  # given up
        proxy.hang_if = _bulks
        taker = asyncio.ensure_future(b.apply(batch))
        deadline = time.monotonic() + 30
        while proxy.hung == 0:  # B holds the claims: its fence of A's writes is on its way
            assert time.monotonic() < deadline and not taker.done(), taker
            await asyncio.sleep(0.02)
        # A's release, which read the events before B's take-over, is written after it
        await db[EVENTS].bulk_write([ReplaceOne({"_id": d["_id"]}, d) for d in stale])
        proxy.hang_if = None
        proxy.resume()
        first = await taker
        await asyncio.sleep(LEASE_S + 0.5)  # B's generation lapses
        res = await a.apply(batch)  # the client's retry
        assert (res.in_flight, len(res.rejected)) == (0, 0), res
        await _assert_exact(db, batch, before, await counters.read())
        assert first.in_flight == len(batch), first  # not B's any more: not applied by B
