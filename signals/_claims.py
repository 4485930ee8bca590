"""Event claims: which call applies an event — a lease with an owner and an expiry.

A call claims an event by inserting it into ``events`` with ``_id`` = the client's event id,
``applied: False``, ``claim_owner`` (a token per call), ``claim_gen: 0`` and
``claim_expires``. A unique ``_id`` insert is atomic on every backend (FerretDB included), so
of concurrent posts of one event exactly one wins it. A call that finds the id already stored
classifies it (:func:`classify`)::

    applied                        duplicate: counted once, nothing done
    not applied, claim live        in flight in another call: waited for (``wait_s``), then a
                                   duplicate once that call marks it applied
    not applied, claim expired     its holder died (or lost its process): taken over —
                                   ``recovered`` — by inserting the next generation's arbiter
                                   ``{_id: "<event id>\\x1f<gen>"}`` into ``event_claims``:
                                   again a unique insert, so one taker wins each generation

The holder renews its claims while it works (every ``lease_s / 3``), so only a holder that
stopped working loses them; a taker's claim also through its generation's arbiter, renewed
apart from the event (its renewals queue behind the process's other updates of the events),
and a generation is taken over only once its arbiter expired too (:meth:`EventClaims.take_over`).
A claim (or arbiter) also records its holder process
(``claim_host``, ``claim_pid``, ``claim_started``: ``opendisco._holder``); one whose holder
was a process of this host that is gone (killed with -9, say) counts as expired at once, so a
retry after the restart applies it (a block among them included) instead of reporting it in
flight until the lease runs out. Expiry is wall-clock time (hosts are assumed NTP-synced, as for
:func:`opendisco._store.lease`); a claim without an expiry (written before claims had one) is
expired. Generation arbiters are deleted once their holder marks their event applied; an
arbiter keeps its taker's mark (:meth:`EventClaims.taken`): the event's own copy of it can be
written over (FerretDB 1.x: of two concurrent updates of a document the last one written
drops the other's change — a failed holder's release landing over a take-over), and a taker
that misses an earlier holder's mark counts that holder's writes again.

A holder that fails gives its claims up at once (:meth:`EventClaims.release`) and writes onto
the events, in the same update, the additive effects it completed (``done``: counters and
graph weights, which a second application would add again); the taker reads them once it
holds the claims (:attr:`ClaimStatus.done`: a read from before its take-over can predate a
holder of a generation in between, which wrote effects and failed) and applies only the
rest. When the store itself is what failed, the release is tried again until the store
answers (:meth:`EventClaims.release_until`, up to two leases): the claims stay live
meanwhile, so no taker acts on them first.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Iterable,
    Mapping,
    Sequence,
)
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo.errors import BulkWriteError

from opendisco._backend import backend_errors
from opendisco._cancel import raise_lost_cancel
from opendisco._exceptions import BackendError
from opendisco._holder import held_until_over, holder
from opendisco._store import renewing

from ._claim_status import NOT_STORED, PROJECTION, ClaimStatus, classify, reused
from ._graph import SEP

__all__ = ["CLAIMS", "ClaimStatus", "EventClaims", "classify", "reused"]

CLAIMS = "event_claims"
#: generations tried in one take-over call (each needs its predecessor expired)
_MAX_GENERATIONS = 8


def _arbiter(event_id: str, gen: int) -> str:
    return f"{event_id}{SEP}{gen}"


class EventClaims:
    """Claims on ``events`` documents and their take-over arbiters in ``event_claims``."""

    def __init__(self, db: Any, *, lease_s: float) -> None:
        self.events = db["events"]
        self.arbiters = db[CLAIMS]
        self.lease_s = lease_s
        #: event id -> generation this process holds beyond 0 (arbiters to delete on mark)
        self._held: dict[str, int] = {}
        #: one update of the events at a time: FerretDB 1.x rewrites a whole document per
        #: update, and of two concurrent updates of one event (a renewal, the records of two
        #: effects; a failed holder's release and a taker's take-over) the last one written
        #: dropped the other's change (across processes: :meth:`taken`)
        self._updating = asyncio.Lock()

    def expiry(self) -> datetime:
        return datetime.now(UTC) + timedelta(seconds=self.lease_s)

    def stamp(self, docs: Iterable[dict[str, Any]], token: str, mark: str) -> list[dict[str, Any]]:
        """``docs`` (events to insert) with a fresh generation-0 claim held by ``token``, which
        marks its counter writes with ``mark``: each holder's mark is kept on the event
        (``claim_marks``, also by :meth:`take_over`), so a later holder can fence the writes of
        an earlier one that may still land (``_fence``), in the claim's own write."""
        expires = self.expiry()
        claim = {"applied": False, "claim_owner": token, "claim_gen": 0, "claim_expires": expires}
        return [{**d, **claim, "claim_marks": [mark]} | holder("claim_") for d in docs]

    async def insert(self, docs: Sequence[dict[str, Any]]) -> set[str]:
        """Insert claimed events (unordered); returns the ids already stored (not claimed)."""
        with backend_errors("event insert failed"):
            try:
                await self.events.insert_many(list(docs), ordered=False)
            except BulkWriteError as exc:
                if any(e.get("code") != 11000 for e in exc.details.get("writeErrors", [])):
                    raise
                return {docs[e["index"]]["_id"] for e in exc.details["writeErrors"]}
        return set()

    async def status(self, ids: Iterable[str]) -> dict[str, ClaimStatus]:
        """The claim state of every id (one ``find`` by ``_id``)."""
        wanted = sorted(set(ids))
        if not wanted:
            return {}
        with backend_errors("event claim lookup failed"):
            docs = await self.events.find({"_id": {"$in": wanted}}, projection=PROJECTION).to_list(
                None
            )
        now, found = datetime.now(UTC), {d["_id"]: d for d in docs}
        # an id the insert said was stored that no document holds (seen on FerretDB under
        # store cuts) is not stored: in flight, never "applied" (``classify(None)``, which
        # means purged past the retention a valid event is within), until a retry stores it
        return {i: classify(found[i], now) if i in found else NOT_STORED for i in wanted}

    async def take_over(self, expired: Mapping[str, int], token: str, mark: str) -> set[str]:
        """Try to take over expired claims (``{event id: its generation}``); returns the ids won
        (``mark``: the taker's counter writes', kept on them as in :meth:`stamp` and on the
        generation's arbiter: :meth:`taken`).

        Generation ``g + 1`` is won by inserting its arbiter. When that arbiter exists, the
        taker of ``g + 1`` may itself have died before updating the event: its arbiter's own
        expiry decides whether ``g + 2`` may be tried.
        """
        live = await self._arbiters_live({i: g for i, g in expired.items() if g > 0})
        want = {i: g + 1 for i, g in expired.items() if i not in live}
        won: dict[str, int] = {}
        for _ in range(_MAX_GENERATIONS):
            if not want:
                break
            expires = self.expiry()
            docs = [
                {"_id": _arbiter(i, g), "event": i, "gen": g, "owner": token, "expires": expires}
                | {"mark": mark}  # an insert: never written over (``taken``)
                | holder()
                for i, g in sorted(want.items())
            ]
            lost: set[str] = set()
            with backend_errors("event claim take-over failed"):
                try:
                    await self.arbiters.insert_many(docs, ordered=False)
                except BulkWriteError as exc:
                    if any(e.get("code") != 11000 for e in exc.details.get("writeErrors", [])):
                        raise
                    lost = {docs[e["index"]]["event"] for e in exc.details["writeErrors"]}
            won.update((i, g) for i, g in want.items() if i not in lost)
            if not lost:
                break
            with backend_errors("event claim lookup failed"):
                taken = await self.arbiters.find(
                    {"_id": {"$in": [_arbiter(i, want[i]) for i in lost]}}
                ).to_list(None)
            now = datetime.now(UTC)
            want = {d["event"]: int(d["gen"]) + 1 for d in taken if held_until_over(d, now)}
        if won:
            await self._record(won, token, mark)
        return set(won)

    async def _record(self, won: Mapping[str, int], token: str, mark: str) -> None:
        """Write the won generations onto the events (one ``update_many`` per generation)."""
        by_gen: dict[int, list[str]] = defaultdict(list)
        for i, g in won.items():
            by_gen[g].append(i)
            self._held[i] = g
        expires = self.expiry()
        with backend_errors("event claim update failed"):
            for g, ids in by_gen.items():
                claim = {
                    "$set": {
                        "claim_owner": token,
                        "claim_gen": g,
                        "claim_expires": expires,
                        **holder("claim_"),
                    },
                    "$addToSet": {"claim_marks": mark},
                }
                async with self._updating:
                    await self.events.update_many({"_id": {"$in": ids}}, claim)

    async def taken(self, ids: Iterable[str]) -> dict[str, ClaimStatus]:
        """:meth:`status` of events this process has just won, with the marks of every holder
        that took them over before it: those on the arbiters of the generations before its own
        too (inserts, which no concurrent update writes over; read by ``_id``), not only those
        on the event (``claim_marks``: an update of it written back by a holder that read it
        before a take-over drops them, and the next taker counted that holder's writes a
        second time). The first holder's mark is the event's own, from its insert."""
        status = await self.status(ids)
        earlier = [_arbiter(i, g) for i in status for g in range(1, self._held.get(i, 0))]
        if not earlier:
            return status
        with backend_errors("event claim lookup failed"):
            arbiters = await self.arbiters.find(
                {"_id": {"$in": earlier}}, projection={"event": 1, "mark": 1}
            ).to_list(None)
        marks: dict[str, set[str]] = defaultdict(set)
        for d in arbiters:
            if d.get("mark"):
                marks[str(d["event"])].add(str(d["mark"]))
        return {i: replace(st, marks=st.marks | marks[i]) for i, st in status.items()}

    async def _arbiters_live(self, gens: Mapping[str, int]) -> set[str]:
        """Of events whose claim on the event expired (``{id: generation}``, taken over before:
        generation > 0), those whose generation's arbiter still holds: its holder renews it
        apart from the event (:meth:`renewing`), so a claim on the event that lags behind —
        its renewal queued behind this process's other updates of the events — is not taken
        from a holder at work. One ``find`` by ``_id``."""
        if not gens:
            return set()
        wanted = [_arbiter(i, g) for i, g in gens.items()]
        with backend_errors("event claim lookup failed"):
            docs = await self.arbiters.find({"_id": {"$in": wanted}}).to_list(None)
        now = datetime.now(UTC)
        return {str(d["event"]) for d in docs if not held_until_over(d, now)}

    async def renew(self, ids: Sequence[str], token: str) -> None:
        """Push the expiry of this holder's claims (its arbiters first) one lease ahead."""
        await self._renew_arbiters(ids)
        await self._renew_events(ids, token)

    async def _renew_events(self, ids: Sequence[str], token: str) -> None:
        with backend_errors("event claim renewal failed"):
            async with self._updating:
                await self.events.update_many(
                    {"_id": {"$in": list(ids)}, "claim_owner": token},
                    {"$set": {"claim_expires": self.expiry()}},
                )

    async def _renew_arbiters(self, ids: Sequence[str]) -> None:
        """Renew the arbiters of the generations this process holds among ``ids`` (by ``_id``
        alone: an arbiter is inserted once, by the one taker that won its generation)."""
        held = [_arbiter(i, self._held[i]) for i in ids if i in self._held]
        if held:
            with backend_errors("event claim renewal failed"):
                await self.arbiters.update_many(
                    {"_id": {"$in": held}}, {"$set": {"expires": self.expiry()}}
                )

    async def release(
        self,
        ids: Sequence[str],
        token: str,
        done: Sequence[str] = (),
        partly: Mapping[str, Collection[str]] | None = None,
    ) -> bool:
        """Give this holder's claims up (a failed apply): they expire now, and record the
        additive effects it completed for them (``done``: the taker skips them), in the
        same update. ``partly``: effects completed for some of the events only (effect ->
        event ids: a ``_bulk`` applied in part), recorded first, while the claims still
        hold. Returns whether it was written (the store may be what failed the apply: see
        :meth:`release_until`); every step is conditional on the claims, so a repeat is
        harmless and a release after a take-over changes nothing."""
        gone = datetime.fromtimestamp(0, UTC)
        update: dict[str, Any] = {"$set": {"claim_expires": gone}}
        if done:
            update["$addToSet"] = {"done": {"$each": sorted({str(d) for d in done})}}
        with contextlib.suppress(BackendError), backend_errors("releasing claims failed"):
            for effect, some in sorted((partly or {}).items()):
                if mine := sorted(set(some) & set(ids)):
                    await self.record_done(mine, token, effect)
            async with self._updating:
                await self.events.update_many(
                    {"_id": {"$in": list(ids)}, "claim_owner": token}, update
                )
            held = [_arbiter(i, self._held[i]) for i in ids if i in self._held]
            if held:
                await self.arbiters.update_many(
                    {"_id": {"$in": held}, "owner": token}, {"$set": {"expires": gone}}
                )
            return True
        return False

    async def try_release(
        self,
        ids: Sequence[str],
        token: str,
        done: list[str],
        partly: dict[str, set[str]],
        settle: Callable[[], Awaitable[None]] | None = None,
    ) -> bool | None:
        """One round of giving a failed call's claims up: ``settle`` first (it may add to
        ``done`` / ``partly``: the writes whose answer was lost, read back), then
        :meth:`release`. ``None``: ``settle`` failed, so nothing was released (a release
        without what it would have found could let a taker add those writes again)."""
        try:
            if settle is not None:
                await settle()
        except Exception:  # the store or the engine still away (or a check that failed)
            return None
        return await self.release(ids, token, done, partly)

    async def release_until(
        self,
        ids: Sequence[str],
        token: str,
        done: list[str],
        partly: dict[str, set[str]],
        *,
        within_s: float,
        settle: Callable[[], Awaitable[None]] | None = None,
        pause_s: float = 0.25,
    ) -> bool:
        """:meth:`try_release` again (backoff up to 2 s) for ``within_s`` while the backends
        do not answer: the effects a call wrote before they went away are recorded when they
        are back, before a taker can act on the claims (live for a lease after their last
        renewal), instead of being added a second time by it. Out of time, the claims are
        given up with what is known (best effort). Returns whether they were released."""
        clock = asyncio.get_running_loop().time
        deadline = clock() + within_s
        while True:
            got = await self.try_release(ids, token, done, partly, settle)
            if got:
                return True
            if clock() + pause_s > deadline:
                return got is None and await self.release(ids, token, done, partly)
            raise_lost_cancel()
            await asyncio.sleep(pause_s)
            pause_s = min(2 * pause_s, 2.0)

    async def record_done(self, ids: Sequence[str], token: str, effect: str) -> None:
        """Record on this holder's events that the additive ``effect`` is written (one
        ``update_many``): a call that takes them over, after this one died, skips it."""
        with backend_errors("recording applied effects failed"):
            async with self._updating:
                await self.events.update_many(
                    {"_id": {"$in": list(ids)}, "claim_owner": token},
                    {"$addToSet": {"done": str(effect)}},
                )

    @contextlib.asynccontextmanager
    async def renewing(self, ids: Sequence[str], token: str) -> AsyncIterator[None]:
        """Renew the claims on ``ids`` every ``lease_s / 3`` while the block runs (a failed
        round is retried by the next): the arbiters in a loop of their own, which no update
        of the events waits for. The events' renewals queue behind this process's other
        updates of the events (one at a time); on a store slowed to seconds an update
        (bench/chaos.py, seed 46, the faults over and the clients retrying) they came later
        than a lease, and the claims went from taker to taker, each fencing the one before
        (16 generations in 8 minutes). A live arbiter keeps the claim (:meth:`take_over`)."""
        every = self.lease_s / 3
        async with (
            renewing(lambda: self._renew_arbiters(ids), every),
            renewing(lambda: self._renew_events(ids, token), every),
        ):
            yield

    async def mark(self, ids: Sequence[str], token: str) -> set[str]:
        """Mark this holder's events applied (one ``update_many``: a bulk of point updates on
        ``events`` was seen to hang FerretDB 1.24) and drop the arbiters of generations held
        for them. An event another call took over meanwhile (this one stalled past its lease)
        is not marked: its taker fenced this call's counter writes, which were no-ops, and
        applies it (marked here, nobody would have counted it). Returns those not marked (read
        only when fewer than all were): not applied by this call. An event whose next
        generation's arbiter exists was taken over, whatever its ``claim_owner`` says (FerretDB:
        an update that read it before the taker's record can write over that record; a holder
        woken from a stall marked 13 events a taker had fenced, under load)."""
        with backend_errors("marking events applied failed"):
            nxt = {_arbiter(i, self._held.get(i, 0) + 1): i for i in ids}
            found = await self.arbiters.find({"_id": {"$in": list(nxt)}}, {"_id": 1}).to_list(None)
            lost = {nxt[str(d["_id"])] for d in found}
            keep = [i for i in ids if i not in lost]
            async with self._updating:
                res = await self.events.update_many(
                    {"_id": {"$in": keep}, "claim_owner": token}, {"$set": {"applied": True}}
                )
            if res.modified_count < len(set(keep)):
                others = {"_id": {"$in": keep}, "claim_owner": {"$ne": token}}
                taken = await self.events.find(others, projection={"_id": 1}).to_list(None)
                lost |= {str(d["_id"]) for d in taken}
        # an event not marked keeps this holder's arbiter: its mark, for the next taker
        held = [(i, _arbiter(i, self._held.pop(i))) for i in ids if i in self._held]
        if dropped := [a for i, a in held if i not in lost]:
            # best effort: leftovers are purged with the events
            with contextlib.suppress(BackendError), backend_errors("dropping arbiters failed"):
                await self.arbiters.delete_many({"_id": {"$in": dropped}})
        return lost

    async def purge(self, cutoff: datetime) -> int:
        """Delete arbiters older than ``cutoff`` (left by holders that died after winning)."""
        with backend_errors("purging event claims failed"):
            res = await self.arbiters.delete_many({"expires": {"$lt": cutoff}})
        return res.deleted_count
