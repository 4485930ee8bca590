"""The recovery sweep and the given-up retry apply stored events a batch per call
(``signals._given_up.apply_batches``): a batch that fails gives up its own events only.

Found by bench/chaos.py (seed 46): once the faults stopped, ~350 events left by killed
holders were swept in one call each time; every sweep failed on a few of them (taken over by
a client's retry or the other worker's sweep: its counter write refused) and gave all of
them up again, and they took 10 minutes to drain. The real-server test holds one batch's
inbound-counter write on its way to MongoDB (``TcpProxy.hold_if``) past the client's socket
timeout: that batch fails, the other is applied by the same sweep, and the next sweep applies
the rest — every like counted once."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from tcp_faults import command_on, store_proxy
from test_signals_claims_live import (
    _assert_exact,
    _batch,
    _Counters,
    _leave_claims,
    claims_db,
    claims_os,
    claims_settings,
)

from opendisco import BackendError, Settings, StoreBackendError, clients
from opendisco.signals import EVENTS, EventProcessor, EventsResult
from opendisco.signals._given_up import BATCH, apply_batches, member_batches

__all__ = ["claims_db", "claims_os", "claims_settings"]  # the fixtures, shared

#: the store client's socket timeout here: the held write fails its call after it
STORE_TIMEOUT_S = 1.5


def _docs(members: list[tuple[str, int]]) -> list[dict[str, Any]]:
    return [
        {"_id": f"{u}-{k}", "user_id": u, "type": "like", "item_id": f"p{k}"}
        for u, n in members
        for k in range(n)
    ]


def test_member_batches_keep_a_members_events_together_in_order() -> None:
    docs = _docs([("a", 3), ("b", 2), ("c", 4), ("d", 1)])
    docs.insert(1, docs.pop(3))  # b's first event between a's: order given, not by member
    batches = member_batches(docs, size=5)
    assert sorted(k for b in batches for k in b) == list(range(len(docs)))
    for b in batches:  # a member's events in the order given
        assert len(b) <= 5
        for u in {docs[k]["user_id"] for k in b}:
            mine = [k for k in b if docs[k]["user_id"] == u]
            assert mine == sorted(mine)
    members = [[docs[k]["user_id"] for k in b] for b in batches]
    assert members == [["a", "a", "a", "b", "b"], ["c", "c", "c", "c", "d"]]


def test_a_member_with_more_than_a_batch_gets_batches_of_their_own() -> None:
    docs = _docs([("a", 1), ("big", 12), ("b", 2)])
    batches = member_batches(docs, size=5)
    members = [[docs[k]["user_id"] for k in b] for b in batches]
    assert members == [["a"], ["big"] * 5, ["big"] * 5, ["big", "big", "b", "b"]]
    assert member_batches([], size=5) == []


async def test_a_failed_batch_gives_up_its_own_events_and_two_in_a_row_stop_the_round() -> None:
    """The loop alone (the apply is a function recording its calls; the real one below)."""
    docs = _docs([(f"m{i}", 2) for i in range(6)])  # 6 members: 3 batches of 4 at size 4
    calls: list[list[str]] = []
    fail: set[int] = set()

    async def apply(raw: list[dict[str, Any]], now: datetime) -> EventsResult:
        calls.append([e["id"] for e in raw])
        if len(calls) in fail:
            raise StoreBackendError(f"batch {len(calls)} refused")
        return EventsResult(accepted=len(raw) - 1, rejected=[(1, "unknown item")])

    now = datetime.now(UTC)
    fail.add(1)
    res, failed = await apply_batches(apply, docs, now, size=4)
    assert len(calls) == 3 and str(failed) == "batch 1 refused"
    assert res.accepted == 6
    # rejections by position in ``docs``: each batch's second event
    assert res.rejected == [(5, "unknown item"), (9, "unknown item")]
    assert calls[1] == [d["_id"] for d in docs[4:8]]
    calls.clear()
    fail = {1, 2}
    res, failed = await apply_batches(apply, docs, now, size=4)
    assert len(calls) == 2 and str(failed) == "batch 1 refused" and res.accepted == 0
    calls.clear()
    fail = set()
    res, failed = await apply_batches(apply, docs, now, size=4)
    assert len(calls) == 3 and failed is None and res.accepted == 9


async def test_a_sweep_applies_the_batches_beside_one_that_fails(
    claims_settings: Settings, claims_db: Any, claims_os: Any
) -> None:
    proxy = await store_proxy(claims_settings.mongo_url)
    via = {"mongo_url": proxy.mongo_url, "mongo_socket_timeout_s": STORE_TIMEOUT_S}
    s = claims_settings.model_copy(update=via | {"events_claim_lease_s": 3.0})
    mongo = clients.mongo_async(s)  # the processor's store traffic through the proxy
    proc = EventProcessor(s, mongo[s.mongo_db], claims_os)
    try:
        await proc.ensure()
        await proc.recover_expired()  # whatever an earlier failed test left behind
        counters = _Counters(proc, claims_db)
        batch = _batch(29, n_users=12)  # 60 events, 5 a member: two batches
        assert len(batch) > BATCH
        before = await counters.read()
        dead = datetime.now(UTC) - timedelta(seconds=1)
        await _leave_claims(claims_db, batch, owner="dead", expires=dead)
        # the first inbound-counter write of the sweep is held past the socket timeout
        writes = command_on("update", "inbound_items")
        proxy.hold_if = lambda data: proxy.held == 0 and writes(data)
        with pytest.raises(BackendError):
            await proc.recover_expired()
        await proc.drain()
        assert proxy.held == 1
        ids = [e["id"] for e in batch]
        applied = {
            d["_id"] async for d in claims_db[EVENTS].find({"_id": {"$in": ids}, "applied": True})
        }
        members = {e["user_id"] for e in batch if e["id"] in applied}
        assert applied and len(applied) < len(batch), len(applied)
        # whole members applied: the batches keep a member's events together
        assert applied == {e["id"] for e in batch if e["user_id"] in members}
        proxy.release()  # the held write reaches the store: fenced, a no-op
        await asyncio.sleep(STORE_TIMEOUT_S)
        res = None
        for _ in range(5):  # the given-up claims are free at once; a loaded store may time out
            try:
                res = await proc.recover_expired()
                break
            except BackendError:
                await proc.drain()
        assert (
            res is not None and res.recovered == len(batch) - len(applied) and not res.rejected
        ), res
        await _assert_exact(claims_db, batch, before, await counters.read())
    finally:
        await mongo.close()
        await proxy.close()
