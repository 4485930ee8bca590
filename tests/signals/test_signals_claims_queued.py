"""A holder at work whose renewals of the events wait behind its process's other updates of
them keeps the events it took over: its generation's arbiter is renewed apart, and a
generation is taken over only once that arbiter expired too (``signals._claims``).

Found by bench/chaos.py (seed 46): once the faults stopped, the store answered an update of
the events in 1–2 s (a scan: a filter on ``claim_owner`` beside ``_id``) and each process
applies one at a time, so renewals came later than the lease; the claims were taken from
holders at work, generation after generation (16 in 8 minutes for one event), each taker
fencing the one before, and 350 events took 10 minutes to drain. Here the holder's process
is made to hold its update lock (its renewals of the events wait) while its counter writes
hang, past the lease."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from http_faults import FaultyHttpProxy
from test_signals_claims_faults import _batch, processors, storm, storm_settings
from test_signals_claims_live import _Counters, _leave_claims
from test_signals_late_writes import _assert_counted_once, _bulks, _hung, _liked, _until

from opendisco import Settings
from opendisco.signals import EVENTS

__all__ = ["storm", "storm_settings"]  # the fixtures, shared with the claims-fault suite

LEASE_S = 3.0


async def test_a_taker_whose_renewals_of_the_events_wait_keeps_its_claims(
    storm_settings: Settings,
) -> None:
    with (
        FaultyHttpProxy(storm_settings.opensearch_url) as slow,
        FaultyHttpProxy(storm_settings.opensearch_url) as direct,
    ):
        base = {"events_claim_lease_s": LEASE_S, "events_claim_wait_s": 1.0}
        s_slow = storm_settings.model_copy(update={**base, "opensearch_url": slow.url})
        s_other = storm_settings.model_copy(update={**base, "opensearch_url": direct.url})
        async with processors(s_slow, 1) as ([holder], db), processors(s_other, 1) as ([other], _):
            batch = _batch()
            ids = [e["id"] for e in batch]
            before = await _Counters(other, db).read()
            trend = await other.exposure.read(_liked(batch))
            dead = datetime.now(UTC) - timedelta(seconds=1)
            await _leave_claims(db, batch, owner="dead", expires=dead)  # a holder killed
            slow.hang_if = _bulks  # the taker's counter writes hang ...
            taking = asyncio.ensure_future(holder.apply(batch))
            await _until(lambda: _hung(slow, 1))
            async with holder.claims._updating:  # ... and its renewals of the events wait
                await asyncio.sleep(LEASE_S + 1.0)  # past the lease of its claim on the events
                stale = await db[EVENTS].find({"_id": {"$in": ids}}).to_list(None)
                assert all(d["claim_gen"] == 1 for d in stale)
                assert all(
                    d["claim_expires"].replace(tzinfo=UTC) < datetime.now(UTC) for d in stale
                )
                res = await other.apply(batch)  # a client's retry: the holder is at work
                assert (res.recovered, res.in_flight) == (0, len(batch)), res
            slow.resume()
            done = await taking
            assert done.recovered == len(batch) and done.in_flight == 0, done
            again = await other.apply(batch)
            assert again.duplicates == len(batch), again
            await _assert_counted_once(other, db, batch, before, trend)
