"""Events a call of this process claimed and then gave up (a backend failed while it applied
them), applied again by the process itself as soon as the backends answer.

A call that fails answers its client 503 ("retry later") and gives its claims up; the events
stay stored, unapplied. A client that retries takes them over; one that does not (or whose
retry budget ran out during a long engine outage) left them to the recovery sweep, which runs
every ``events_recover_every_s`` (300 s): measured with the engine killed with -9 and
restarted, such a batch was applied 270 s after the engine was back
(``tests/api/test_api_engine_kills.py``). :class:`GivenUp` remembers their ids (at most
``LIMIT``; beyond that the sweep still applies them) and :meth:`GivenUp.retry_forever` applies
them again — the claims taken over like any retry's, so exactly once — every ``first_s`` while
some are left, backing off to ``max_s`` while the backends still fail or the claims are still
held (their release is retried until the store answers: ``_claims``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from opendisco._backend import backend_errors
from opendisco._cancel import raise_lost_cancel
from opendisco._exceptions import BackendError

from ._claims import classify
from ._event import Event, EventsResult

__all__ = [
    "BATCH",
    "LIMIT",
    "UNAPPLIED",
    "GivenUp",
    "apply_batches",
    "mark_dropped",
    "member_batches",
    "raw_event",
]

#: ids remembered at most (a longer outage leaves the rest to the recovery sweep)
LIMIT = 10_000
#: ids read and applied again per round
ROUND = 500
#: stored events applied per call by the recovery sweep and the given-up retry
#: (:func:`apply_batches`)
BATCH = 50
log = logging.getLogger("opendisco.signals")

#: the recovery sweep's scan: events stored unapplied, but those it rejected before
UNAPPLIED: dict[str, Any] = {"applied": False, "dropped": {"$exists": False}}

Apply = Callable[[list[dict[str, Any]], datetime], Awaitable[EventsResult]]


def raw_event(doc: Mapping[str, Any]) -> dict[str, Any]:
    """A stored event back to the fields a client posted (what a retry would post)."""
    raw = {k: doc[k] for k in Event.model_fields if k != "id" and doc.get(k) is not None}
    return {**raw, "id": doc["_id"]}


def member_batches(docs: Sequence[Mapping[str, Any]], size: int = BATCH) -> list[list[int]]:
    """Pure: the positions of ``docs`` (stored events) in batches of at most ``size``, each
    member's events together and in the order given (a member with more than ``size`` fills
    whole batches of their own first)."""
    by_member: dict[Any, list[int]] = {}
    for k, d in enumerate(docs):
        by_member.setdefault(d.get("user_id"), []).append(k)
    batches: list[list[int]] = []
    for mine in by_member.values():
        while len(mine) > size:
            batches.append(mine[:size])
            mine = mine[size:]
        if batches and len(batches[-1]) + len(mine) <= size:
            batches[-1].extend(mine)
        else:
            batches.append(mine)
    return batches


async def apply_batches(
    apply: Apply, docs: Sequence[Mapping[str, Any]], now: datetime, size: int = BATCH
) -> tuple[EventsResult, BackendError | None]:
    """Apply the stored events ``docs`` again, a call per batch of :func:`member_batches`.

    A call fails as a whole: one of its events taken over by another call (a client's retry,
    another process's sweep; its counter write then refused), a write timed out. In one call,
    a few contended events failed hundreds beside them, sweep after sweep (bench/chaos.py,
    seed 46, once the faults stopped). So a batch that fails gives up its own events only
    and the next batches are applied all the same; two failing in a row stop the round (the
    backends failing, not one batch contended: the next round tries the rest). Returns the
    sums of the calls' results (the rejections by their position in ``docs``) and the first
    failure."""
    out, failed, in_a_row = EventsResult(), None, 0
    for batch in member_batches(docs, size):
        try:
            res = await apply([raw_event(docs[k]) for k in batch], now)
        except BackendError as exc:
            failed, in_a_row = failed or exc, in_a_row + 1
            if in_a_row == 2:
                break
            continue
        in_a_row = 0
        out.accepted += res.accepted
        out.duplicates += res.duplicates
        out.recovered += res.recovered
        out.in_flight += res.in_flight
        out.rejected += [(batch[i], why) for i, why in res.rejected]
        out.capped += res.capped
        out.mutual += res.mutual
    return out, failed


async def mark_dropped(events: Any, reasons: Mapping[Any, str]) -> None:
    """Mark ``dropped`` (with its reason) each stored, unapplied event of ``reasons`` (id →
    the reason its apply was rejected with; its item gone for good and no record of it kept
    on the event: nothing of it was written by that apply, rejected before the claims), so
    the recovery scans leave it out (:data:`UNAPPLIED`): read first by each and rejected
    again, as many as a scan's ``limit`` kept every event stored after them from recovery
    (the sweep's rejections); answered ``rejected``, it was applied by a later sweep once its
    item was back (a call's: ``_event_items.stored_about_gone``). A client's retry once the
    item is back still completes it, and is answered so. One ``update_many`` per reason."""
    by_reason: dict[str, list[Any]] = {}
    for i, reason in reasons.items():
        by_reason.setdefault(reason, []).append(i)
    for reason, ids in by_reason.items():
        with backend_errors("marking rejected events failed"):
            await events.update_many(
                {"_id": {"$in": ids}, "applied": False}, {"$set": {"dropped": reason}}
            )


class GivenUp:
    """The ids of the events this process gave up, and their retry (module docstring)."""

    def __init__(self, events: Any, apply: Apply, limit: int = LIMIT) -> None:
        self.events = events
        self.apply = apply
        self.limit = limit
        self._ids: dict[str, None] = {}  # insertion-ordered set
        self._some = asyncio.Event()

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, ids: Iterable[str]) -> None:
        for i in ids:
            if len(self._ids) >= self.limit:
                break
            self._ids[i] = None
        if self._ids:
            self._some.set()

    def _discard(self, ids: Iterable[str]) -> None:
        for i in ids:
            self._ids.pop(i, None)
        if not self._ids:
            self._some.clear()

    async def retry_once(self, now: datetime | None = None) -> int:
        """Apply the given-up events whose claims are free again; drop those applied (by
        anyone), gone or refused. Returns how many this round applied."""
        ids = list(self._ids)[:ROUND]
        if not ids:
            return 0
        now = now or datetime.now(UTC)
        with backend_errors("reading given-up events failed"):
            docs = await self.events.find({"_id": {"$in": ids}}).to_list(None)
        found = {d["_id"]: d for d in docs}
        status = {i: classify(found.get(i), now) for i in ids}
        self._discard(i for i, st in status.items() if st.applied)
        free = [found[i] for i, st in status.items() if not st.applied and st.expired]
        if not free:
            return 0
        res, failed = await apply_batches(self.apply, free, now)
        self._discard(free[i]["_id"] for i, _ in res.rejected)
        done = res.accepted + res.recovered
        if done:
            log.info("applied %d events given up while a backend failed", done)
        if failed is not None and not done:
            raise failed
        return done

    async def retry_forever(self, first_s: float = 1.0, max_s: float = 10.0) -> None:
        """:meth:`retry_once` while ids are left: every ``first_s``, backing off to ``max_s``
        while nothing could be applied; waits for the next given-up call when none is left."""
        wait = first_s
        while True:
            await self._some.wait()
            await asyncio.sleep(wait)
            try:
                applied = await self.retry_once()
            except BackendError as exc:
                log.warning("given-up events not applied yet: %.200s", exc)
                applied = 0
            except Exception:
                log.exception("given-up events not applied: unexpected failure")
                applied = 0
            wait = first_s if applied else min(2 * wait, max_s)
            raise_lost_cancel()
