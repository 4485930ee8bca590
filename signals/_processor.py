"""Events → real-time signals: validated, claimed once, applied in one pass.

Order of one :meth:`EventProcessor.apply` call (FerretDB has no transactions, so the order is
the guarantee)::

    1. validate every event (pure)            malformed → rejected, nothing written for it
    2. read: user states (1 find) + items (1 mget of content/behaviour vectors, category, kind;
       MongoDB for the ones the engine does not hold, deleted too for events already stored)
                                              unknown item → rejected, nothing written for it
                                                (one stored earlier: marked dropped; one
                                                stored applied: a duplicate)
    3. claim: insert_many into `events` with _id = event id, applied=False and a claim (owner,
       generation, expiry; see ``_claims``), ordered=False. An id already stored is
                                              about another type, member or item → rejected
                                                (a retry repeats its event; ids are one
                                                namespace for every API key)
                                              applied → duplicate (no-op)
                                              claimed, claim live → in flight in another
                                                call: waited for (events_claim_wait_s), then a
                                                duplicate; still running → in_flight
                                              claimed, claim expired → its holder died: taken
                                                over (one taker wins) and applied: recovered
    4. effects (claims renewed while they run; ``_apply``): user_state (idempotent: entries
       keyed by event id, vectors recomputed, under per-user leases; one bulk of replaces for
       the batch; the co-engagement pairs are computed from the fresh states inside the
       leases, so concurrent batches of one member link each pair once), exposure counters
       (ExposureStore.record), co-engagement graph (one read and one write per distinct source
       item, its new edges coalesced, under item leases), mutual likes, blocks between members
       (a hide of a profile, both directions), inbound attention counters (profiles)
    5. mark: update_many applied=True (an event taken over meanwhile: waited for, not accepted)

Everything that can reject an event happens before its first write. Concurrent posts of one event
apply it once (the claim), and a call returns only when every event it was given is applied by it or
by another call (or reports the ones still running as ``in_flight``). User state is exactly-once.
Each counter and graph-weight write done in 4 is recorded on its events at once, and a call that
fails in 4 gives its claims up at once with what it wrote: a counter write whose answer was lost
(engine or MongoDB) is read back by its mark, and the release is retried while the store does not
answer (up to two leases, so a store outage between a write and its record is waited out). So the
call that takes them over (after a failure or a crash) adds only the rest: exactly-once too, except
for a crash in the milliseconds between a MongoDB counter write and its record, a lost write whose
mark later writers pushed out before it was read back (one mark per MongoDB row, the last 16 per
engine counter), and an outage longer than the read-back waits. An engine counter write is not
read back but fenced (``_fence``: landed, or made a no-op should it land later — a paused node
applies it when it wakes), and each holder's mark is kept on its events with its claim, so the
call taking them over fences the writes of earlier holders that could not (a crash, an engine
that did not answer) before it writes (the inbound counters' too; co-engagement rows: ``_graph``);
a taker's mark is also kept on its generation's arbiter (``_claims``: an update of the events
written over by a concurrent one dropped it, and the next taker counted its writes again).
A counters ``_bulk`` applied in part is read item by item: the events whose items it wrote
record it done, those it names unsure are fenced by their mark (a 429 retry round, ``_apply``).
Raw events expire through a TTL index on ``ts``; a periodic sweep (:meth:`EventProcessor.sweep`,
in each API process from 5 s after start) applies expired claims nobody retried (and purges
expired events without TTL indexes); the events of this process's failed calls are applied again
as soon as the backends answer (:meth:`EventProcessor.retry_given_up_forever`, ``_given_up``).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Collection, Sequence
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from opensearchpy import AsyncOpenSearch

from opendisco._backend import backend_errors
from opendisco._cancel import raise_lost_cancel
from opendisco._exceptions import BackendError, EventInvalid, SearchBackendError
from opendisco._settings import Settings

from ._apply import Check, EffectWriter, settle_unsure
from ._blocks import BlockStore
from ._claims import EventClaims, classify, reused
from ._event import Event, EventsConfig, EventsResult, reuse_reason, stored_event, validate_batch
from ._event_items import about_items, event_items, one_per_id, stored_about_gone
from ._events_store import EVENTS, ensure_events_store
from ._exposure import ExposureStore
from ._folding import followed_behaviour
from ._given_up import UNAPPLIED, GivenUp, apply_batches, mark_dropped
from ._graph import ItemGraph
from ._inbound import InboundCounter
from ._members import UserGraph
from ._repair import repair_vectors
from ._user_state import UserStateStore

__all__ = ["EVENTS", "EventProcessor"]

#: the background sweep's first run after a start: what a killed process left, in seconds
RECOVER_FIRST_S = 5.0
log = logging.getLogger("opendisco.signals")


class EventProcessor:
    """Validates and applies event batches (see the module docstring for the order)."""

    def __init__(
        self,
        settings: Settings,
        db: Any,
        os_client: AsyncOpenSearch,
        *,
        config: EventsConfig | None = None,
        exposure: Any | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.os = os_client
        self.cfg = config or EventsConfig()
        self.events = db[EVENTS]
        self.claims = EventClaims(db, lease_s=settings.events_claim_lease_s)
        self.states = UserStateStore(db, self.cfg.user_state)
        self.items = ItemGraph(db)
        self.users = UserGraph(db)
        self.inbound = InboundCounter(db)
        self.blocks = BlockStore(db)
        self.exposure = exposure if exposure is not None else ExposureStore(os_client, settings)
        self.writer = EffectWriter(
            self.states,
            self.items,
            self.users,
            self.blocks,
            self.inbound,
            self.exposure,
            self.cfg,
            self._items,
            count_served=settings.exposure_count_served,
            behaviour=followed_behaviour(db, settings),
        )
        self._ready = False  # every index ensured, the engine's included
        self._store_ready = False  # MongoDB's collections and indexes ensured
        self.native_ttl = True
        self._last_purge = 0.0
        self._last_recover = time.monotonic()  # the first sweep one cadence after start
        self._releasing: set[asyncio.Future[bool]] = set()  # releases retried (``_give_up``)
        self.given_up = GivenUp(self.events, self._apply_ready)

    async def _give_up(
        self,
        ids: list[str],
        token: str,
        completed: list[str],
        partly: dict[str, set[str]],
        unsure: dict[str, Check],
    ) -> None:
        """Release a failed call's claims with what it wrote (writes whose answer was lost
        read back first). When the backends do not answer and it wrote (or may have written)
        something, the release is retried in the background (:meth:`drain` waits for it):
        lost, a taker would add those effects a second time; the caller is answered now."""
        settle = partial(settle_unsure, unsure, completed, partly)
        if await self.claims.try_release(ids, token, completed, partly, settle):
            return
        if completed or partly or unsure:
            within, args = 2 * self.claims.lease_s, (ids, token, completed, partly)
            task = asyncio.ensure_future(
                self.claims.release_until(*args, within_s=within, settle=settle)
            )
            self._releasing.add(task)
            task.add_done_callback(self._releasing.discard)

    async def drain(self) -> None:
        """Wait for the releases still retried in the background (a process stopping)."""
        if self._releasing:
            await asyncio.wait(list(self._releasing))

    async def purge_expired(self, now: datetime | None = None) -> int:
        """Delete events older than the retention (a TTL index's job; validation rejects them)."""
        cutoff = (now or datetime.now(UTC)) - timedelta(days=self.cfg.ttl_days)
        with backend_errors("purging expired events failed"):
            res = await self.events.delete_many({"ts": {"$lt": cutoff}})
        await self.claims.purge(cutoff)
        return res.deleted_count

    async def recover_forever(self, first_s: float = RECOVER_FIRST_S) -> None:
        """Run :meth:`sweep` in the background: ``first_s`` after start, then every
        ``events_recover_every_s``; a failed sweep is logged and tried again sooner (``first_s``
        doubling up to the cadence: a store down at start delayed recovery a cadence)."""
        wait = min(first_s, every := self.settings.events_recover_every_s)
        while True:
            await asyncio.sleep(wait)
            ok = await self._sweep_logged(f"next in at most {every:.0f} s")
            raise_lost_cancel()
            wait = every if ok else min(2 * wait, every)

    async def _sweep_logged(self, then: str) -> bool:
        """:meth:`sweep`, its failure logged instead of raised (a backend error as a warning,
        anything else with its traceback: a bug, not a reason to stop sweeping)."""
        try:
            await self.sweep()
            return True
        except BackendError as exc:
            log.warning("events recovery sweep failed, %s: %.200s", then, exc)
        except Exception:
            log.exception("events recovery sweep failed unexpectedly, %s", then)
        return False

    async def sweep(self) -> None:
        """One recovery sweep: :meth:`recover_expired`, :meth:`repair_vectors`, without TTL indexes
        :meth:`purge_expired` every ``purge_every_s`` (a FerretDB scan: no client's call waits)."""
        self._last_recover = now = time.monotonic()  # the in-call trigger waits a cadence
        try:
            await self.recover_expired()
            await self.repair_vectors()
        finally:  # not once cancelled (a process stopping): it would wait for the scan
            off = self.native_ttl or ((task := asyncio.current_task()) and task.cancelling())
            if not off and now - self._last_purge > self.cfg.purge_every_s:
                self._last_purge = now
                await self.purge_expired()

    async def repair_vectors(self, limit: int = 100) -> int:
        """Fold again the vectors of up to ``limit`` members (:func:`~._repair.repair_vectors`)."""
        if not self._ready:
            await self.ensure()
        model = self.writer.behaviour
        return await repair_vectors(self.states, self._items, self.cfg.user_state, limit, model)

    async def recover_expired(self, limit: int = 1000) -> EventsResult:
        """Apply, in batches (``apply_batches``), stored events whose claim expired unapplied:
        one ``find`` on ``applied`` (a scan on FerretDB). One rejected (its item gone for good)
        is left out of later scans (``mark_dropped``); a failed batch is raised after."""
        if not self._ready:
            await self.ensure()
        with backend_errors("recovery scan failed"):
            docs = await self.events.find(UNAPPLIED, limit=limit).to_list(None)
        now = datetime.now(UTC)
        stale = [d for d in docs if (st := classify(d, now)).expired and not st.applied]
        res, failed = await apply_batches(self._apply, stale, now)  # a call per batch
        await mark_dropped(self.events, {stale[i]["_id"]: why for i, why in res.rejected})
        if res.recovered:
            log.warning("recovered %d events left by a dead holder", res.recovered)
        if failed is not None:
            raise failed
        return res

    async def retry_given_up_forever(self) -> None:
        """Apply again, in the background, the events this process's failed calls gave up, as
        soon as the backends answer (:class:`~._given_up.GivenUp`)."""
        await self.given_up.retry_forever()

    async def _apply_ready(self, events: Sequence[Any], now: datetime) -> EventsResult:
        if not self._ready:
            await self.ensure()
        return await self._apply(events, now)

    async def ensure(self) -> None:
        """Indexes: TTL on ``events.ts``, lookups on user/type, graph collections, exposure.

        Where the server has no TTL indexes (FerretDB 1.x) a plain ``ts`` index is created and
        :meth:`purge_expired` runs from :meth:`sweep` at most every ``purge_every_s``. The
        exposure counters index is the engine's: while the engine fails it is tried again by
        the next call, events that need no engine write (blocks, hides, passes) are applied
        meanwhile and the others fail before any write (a counter write must not create the
        index with dynamic mappings).
        """
        if not self._store_ready:
            await self._ensure_store()
        try:
            await self.exposure.ensure_once()
        except SearchBackendError as exc:
            log.warning("events: exposure counters index not ensured yet: %.200s", exc)
            return
        self._ready = True

    async def _ensure_store(self) -> None:
        self.native_ttl = await ensure_events_store(self.db, self.cfg.ttl_days)
        self._store_ready = True

    # --- reads ------------------------------------------------------------------------------

    async def _items(
        self, ids: Sequence[str], about: Collection[str] = ()
    ) -> dict[str, dict[str, Any]]:
        """The items ``ids`` for the effects (:func:`~._event_items.event_items`)."""
        coll = self.db[self.settings.items_collection]
        return await event_items(self.os, coll, self.settings, ids, about)

    # --- apply ------------------------------------------------------------------------------

    async def apply(self, events: Sequence[Any], now: datetime | None = None) -> EventsResult:
        """Validate and apply a batch; see :class:`EventsResult`."""
        if not self._ready:
            await self.ensure()
        now = now or datetime.now(UTC)
        if time.monotonic() - self._last_recover > self.settings.events_recover_every_s:
            await self._sweep_logged("the batch applies all the same")
        if len(events) > self.cfg.max_batch:
            raise EventInvalid(f"at most {self.cfg.max_batch} events per call")
        return await self._apply(events, now)

    async def _apply(self, events: Sequence[Any], now: datetime) -> EventsResult:
        t0 = time.perf_counter()
        out = EventsResult()
        valid = validate_batch(events, now, self.cfg, out)  # 1. (pure)

        # 2. reads (no writes yet)
        items: dict[str, dict[str, Any]] = {}
        if valid:
            states = await self.states.get_many((ev.user_id for _, ev in valid), salvage=True)
            wanted = {ev.item_id for _, ev in valid}
            for st in states.values():
                wanted.update(e["id"] for e in (*st.positives, *st.negatives))
            items = await self._items(sorted(wanted), about={ev.item_id for _, ev in valid})
            coll = self.db[self.settings.items_collection]
            known = self.cfg.require_known_items  # events stored for items deleted since
            valid = await stored_about_gone(self.events, coll, valid, items, known, out)
        valid = about_items(valid, items, self.cfg.require_known_items, out)  # (pure)
        valid = one_per_id(valid, out)  # (pure) an id names the first event left standing
        if valid:
            # 3.-5. claim, effects, mark
            await self._claim_and_apply(valid, items, now, out)
        out.settle_repeats()  # (pure) a repeat within the batch answered as its first
        out.took_ms = (time.perf_counter() - t0) * 1e3
        return out

    async def _claim_and_apply(
        self,
        valid: list[tuple[int, Event]],
        items: dict[str, dict[str, Any]],
        now: datetime,
        out: EventsResult,
    ) -> None:
        """Claim ``valid`` (``(index in the batch, event)``); apply the claimed ones; wait for
        those another call holds (taking over any whose claim expires meanwhile) until
        ``events_claim_wait_s`` has passed. An id stored for an event about something else
        (type, member or item) is rejected: a retry repeats its event."""
        token = uuid.uuid4().hex
        evs = [ev for _, ev in valid]
        index = {ev.id: i for i, ev in valid}
        by_id = {ev.id: ev for ev in evs}
        done: dict[str, frozenset[str]] = {}  # taken over: what the failed holder completed
        docs = [stored_event(ev, self.cfg.weights.get(ev.type, 0.0), now, items) for ev in evs]
        # each round's counter writes their own mark (a counter ignores a mark it keeps: a
        # later round of this call may count the same items again), kept on its events
        mark = uuid.uuid4().hex[:12]
        earlier: dict[str, frozenset[str]] = {}  # taken over: the marks of earlier holders
        waiting = await self.claims.insert(self.claims.stamp(docs, token, mark))
        mine = [ev for ev in evs if ev.id not in waiting]
        out.accepted = len(mine)
        claimed = {ev.id for ev in mine}  # by this call's insert (the others: taken over)
        deadline = time.monotonic() + self.settings.events_claim_wait_s
        pause = 0.01
        while True:
            if waiting:
                status = await self.claims.status(waiting)
                for i in reused(status, by_id):
                    out.rejected.append((index[i], reuse_reason(status.pop(i).about, by_id[i])))
                    waiting.discard(i)
                applied = {i for i, st in status.items() if st.applied}
                expired = {i: st.gen for i, st in status.items() if not st.applied and st.expired}
                won = await self.claims.take_over(expired, token, mark) if expired else set()
                out.duplicates += len(applied)
                out.recovered += len(won)
                waiting -= applied | won
                mine += [by_id[i] for i in sorted(won)]
                if won:
                    # what the earlier holders completed, read once the claims are ours: the
                    # status above may predate a holder that took them over after that read,
                    # wrote some effects and gave them up, this call then winning the next
                    # generation (taken from the status above, that holder's counter writes
                    # were added again: test_signals_claims_faults, seen under load)
                    fresh = await self.claims.taken(won)
                    done.update((i, fresh[i].done) for i in won)
                    earlier.update((i, fresh[i].marks - {mark}) for i in won)
            if mine:
                ids = [ev.id for ev in mine]
                completed: list[str] = []
                partly: dict[str, set[str]] = {}  # an engine _bulk applied in part
                unsure: dict[str, Check] = {}  # a store write that failed: did it land?
                try:
                    async with self.claims.renewing(ids, token):
                        record = partial(self.claims.record_done, ids, token)
                        # earlier holders' counter writes: landed (done) or fenced
                        noted = partial(self.claims.record_done, token=token)
                        prior = await self.writer.fence_earlier(mine, items, earlier, done, noted)
                        await self.writer.apply(
                            mine, items, now, out, done, completed, partly, record, unsure, mark,
                            earlier=prior,
                        )  # fmt: skip
                except BaseException:
                    # a failed call gives its claims up at once: a retry takes them over now
                    # instead of waiting for them to expire, and skips the additive effects
                    # this call completed (the idempotent ones are done again); this process
                    # retries them itself once the backends answer (``_given_up``)
                    self.given_up.add(ids)
                    await asyncio.shield(self._give_up(ids, token, completed, partly, unsure))
                    raise
                lost = await self.claims.mark(ids, token)  # 5.
                if lost:  # taken over while this call stalled: not applied by it, waited for
                    out.accepted -= len(lost & claimed)
                    out.recovered -= len(lost - claimed)
                    waiting |= lost
                mine, mark = [], uuid.uuid4().hex[:12]
            if not waiting or time.monotonic() >= deadline:
                break
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.2)
        out.in_flight = len(waiting)
