"""Engine counter writes whose answers are lost on the wire, on the real servers: the fault
proxy (``tests/http_faults.py``, ``lose_answer_if``) forwards each ``_bulk`` to OpenSearch,
which applies it, and cuts the client's connection before the answer. The client's transport
sends the request again (opensearch-py retries a connection error), each re-send applied and
cut too, until the call fails. The counters must hold every impression and like once: a marked
write a counter already got is ignored (``_counting.once_per_mark``), the served impressions'
flush sends its part again with its mark, and an event batch reads its marks back before the
retry that takes its claims over."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from http_faults import FaultyHttpProxy
from test_signals_claims_faults import _batch, _served_through, processors, storm, storm_settings
from test_signals_claims_live import MOVIES, _assert_exact, _Counters

from opendisco import SearchBackendError, Settings
from opendisco.signals import EventsConfig

__all__ = ["storm", "storm_settings"]  # the fixtures, shared with the claims-fault suite


def _bulks(method: str, path: str, body: bytes = b"") -> bool:
    return path.rstrip("/").endswith("_bulk")


async def test_a_served_flush_whose_answer_was_lost_counts_every_impression_once(
    storm: tuple[FaultyHttpProxy, Settings],
) -> None:
    """The flush fails not knowing whether its part was written; it keeps the part with its
    mark and the next flush sends it again: the counters do not add it a second time (nor the
    transport's re-sends of the lost request)."""
    proxy, s = storm
    async with _served_through(s) as (store, served):
        ids = MOVIES[:6]
        before = await store.counts(ids)
        served.add(ids)
        served.add(ids[:2])
        shown = Counter([*ids, *ids[:2]])
        proxy.lose_answer_if = _bulks
        with pytest.raises(SearchBackendError):
            await served.flush()
        assert proxy.lost >= 1
        applied = await store.counts(ids)
        assert {i: applied[i] - before[i] for i in ids} == dict(shown)  # the engine has it, once
        assert len(served.retry) == 1 and served.retry[0][1] == dict(shown)  # kept, with its mark
        assert served.written == 0 and served.unwritten(ids[0]) == shown[ids[0]]
        assert served.unwritten_total() == sum(shown.values())  # the API's gauge
        served.add(ids[2:3])  # served meanwhile: a part of its own, after the one kept
        shown[ids[2]] += 1
        proxy.lose_answer_if = None
        await served.drain()
        after = await store.counts(ids)
        assert {i: after[i] - before[i] for i in ids} == dict(shown)
        assert not served.retry and not served.pending
        assert served.written == sum(shown.values()) and served.dropped == 0


async def test_an_event_batch_whose_engine_writes_lost_their_answers_counts_once(
    storm: tuple[FaultyHttpProxy, Settings],
) -> None:
    """Every counters ``_bulk`` of the calls (exposure and live trend) is applied and its
    answer lost; the calls fail, and the client's retry after the fault adds nothing again:
    impressions, likes' live counts and the MongoDB counters hold the batch exactly once."""
    proxy, s = storm
    # the call without the claims waits for them (the failed call gives them up only once the
    # answers are back) until they expire, takes them over and fails too: after a 5 s lease,
    # not the suite's 30 s (30 s of this test's 32)
    s = s.model_copy(update={"events_claim_lease_s": 5.0})
    async with processors(s, 2) as (workers, db):
        counters = _Counters(workers[0], db)
        batch = _batch()
        liked = Counter(e["item_id"] for e in batch if e["type"] == "like")
        before = await counters.read()
        trend_before = await workers[0].exposure.read(liked)
        proxy.lose_answer_if = _bulks
        results = await asyncio.gather(*(w.apply(batch) for w in workers), return_exceptions=True)
        assert all(isinstance(r, SearchBackendError) for r in results), results  # the taker too
        assert proxy.lost >= 1
        proxy.lose_answer_if = None
        for w in workers:
            await w.drain()  # a read-back the failing call could not finish is done here
        res = await workers[1].apply(batch)  # the client's retry
        assert res.accepted == 0 and res.in_flight == 0, res
        await _assert_exact(db, batch, before, await counters.read())
        trend_after = await workers[0].exposure.read(liked)
        weight = EventsConfig().weights["like"]
        for item, n in liked.items():
            added = trend_after[item].trend - trend_before[item].trend
            assert added == pytest.approx(n * weight, rel=0.01), (item, added, n)


async def test_a_retry_round_of_rejected_items_whose_answer_was_lost_counts_once(
    storm: tuple[FaultyHttpProxy, Settings],
) -> None:
    """The counters ``_bulk`` of a batch has one item rejected (429); the retry round that
    sends it again alone is applied and its answer lost. The call fails naming that item
    unwritten; it reads the item's mark back before giving its claims up, so the retry that
    takes them over does not add it again."""
    proxy, s = storm
    async with processors(s, 1) as ([proc], db):
        counters = _Counters(proc, db)
        batch = _batch()
        liked = {e["item_id"] for e in batch if e["type"] == "like"}
        seen = sorted({e["item_id"] for e in batch if e["type"] == "impression"} - liked)
        item, index = seen[0], proc.exposure.index  # in the exposure bulk, not in the trend one
        before = await counters.read()
        proxy.reject_item = lambda idx, doc_id: (
            idx == index and doc_id == item and not proxy.rejected[item]
        )

        def retry_round(method: str, path: str, body: bytes) -> bool:
            alone = body.count(b'"update"') == 1 and f'"_id":"{item}"'.encode() in body
            return _bulks(method, path) and alone

        proxy.lose_answer_if = retry_round
        with pytest.raises(SearchBackendError):
            await proc.apply(batch)
        assert proxy.rejected[item] == 1 and proxy.lost >= 1
        proxy.reject_item = proxy.lose_answer_if = None
        await proc.drain()
        res = await proc.apply(batch)  # the client's retry
        assert (res.accepted, res.in_flight) == (0, 0), res
        await _assert_exact(db, batch, before, await counters.read())
