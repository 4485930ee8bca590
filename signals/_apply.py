"""Step 4 of an event batch (``_processor``): the effects of claimed events, written.

:class:`EffectWriter` writes what :func:`~._effects.plan_effects` works out: the engine's
counters (exposure, live trend) run alongside the MongoDB writes, which go one after another
(FerretDB 1.x, SQLite, was seen to hang on concurrent upserting bulk writes into one
database): user states (read-merge-write under per-member leases), co-engagement weights,
mutual likes, blocks, inbound attention.

A call that fails part-way gives its claims up; the call that takes them over must not add
again what the failed one added. User state, mutual likes and blocks are idempotent; each
additive effect (:class:`~._effects.Additive`) the call completed is recorded on its events as
soon as it is written (``record``; again with the release of a failed call: ``completed``), and
the taker applies it only for the events that have not had it (``done``) — after a crash too,
except for an effect written in the few milliseconds before its record. A MongoDB counter write
(co-engagement, inbound) and an engine counter write (exposure, trend) store a mark of the write
with what they write, so when the answer is lost (the connection cut after the write was
applied) the failing call reads the mark back and records the effect all the same
(``unsure``); an engine counter keeps the last marks and ignores a write whose mark it keeps
(the transport's re-sends of a request whose answer was lost). The engine's check is a fence
(``_fence``): a write that is still on its way when checked can no longer land, and a call
taking events over fences the writes of their earlier holders first (:meth:`EffectWriter.
fence_earlier`). The MongoDB writes (inbound counters, co-engagement rows) are fenced the
same way (``_store_fence``: a write held on its way past the client's timeout and applied
later counted twice); the co-engagement rows are fenced by the taker as it writes them, and it
leaves out the rows that keep an earlier holder's mark (a write that landed for some rows
only: ``_graph``). An engine counter ``_bulk``
applied in part records the effect on the events whose items it wrote (the counters are per
item), so the taker adds only the items it did not — those it names unsure are fenced by
their mark too (a 429 retry round that failed without an answer may have been applied). The
co-engagement pairs link each positive to those merged before it (``_graph.co_engagement_links``),
whether or not a failed call merged the batch already and however calls split it since.

While the engine cannot be read, the events' items come from MongoDB without their vectors
(:func:`stored_items`): the effects that need no engine write (blocks, hides, passes, user
state) are applied and the user states keep their vectors, marked ``vectors_stale``: recomputed
by the member's next event applied with the engine up, or by the recovery sweep's repair
(:meth:`~._processor.EventProcessor.repair_vectors`) once the engine answers again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from functools import partial
from typing import Any

from opendisco._backend import backend_errors
from opendisco._domain import readable_id
from opendisco._exceptions import BackendError, PartialWrite, SearchBackendError
from opendisco._published import Followed

from ._blocks import BlockStore
from ._effects import Additive, Effects, pending, plan_effects
from ._event import ITEM_FIELDS, Event, EventsConfig, EventsResult
from ._exposure import ExposureStore
from ._folding import recompute
from ._graph import ItemGraph, co_engagement_links
from ._inbound import InboundCounter
from ._members import UserGraph
from ._store_fence import needs_fence
from ._user_state import UserState, UserStateStore, merge_events

__all__ = ["NO_VECTORS", "Check", "EffectWriter", "item_vectors", "settle_unsure", "stored_items"]

ItemFetch = Callable[[Sequence[str]], Awaitable[dict[str, dict[str, Any]]]]
#: stores that one additive effect of the batch is written (``EventClaims.record_done``)
Record = Callable[[str], Awaitable[None]]
#: whether a counter write that failed landed all the same: ``True`` / ``False`` for
#: the whole effect, or the ids of the events it counted (``EffectWriter.apply``'s ``unsure``)
Check = Callable[[], Awaitable[bool | set[str]]]
#: marks an item read from MongoDB while the engine was down: its vectors are unknown here
NO_VECTORS = "_no_vectors"


async def stored_items(
    coll: Any, ids: Sequence[str], *, unindexed: bool = False, deleted: bool = False
) -> dict[str, dict[str, Any]]:
    """Kind, owner and category of the items ``ids`` (not deleted, but with ``deleted``),
    marked :data:`NO_VECTORS`: what the effects need but the vectors, when the engine cannot
    be read (the user states then keep their vectors until an event with the engine up).
    ``unindexed``: the engine answered that it holds none of them (not synced yet), so there
    are no vectors to wait for: not marked."""
    with backend_errors("item lookup for events failed (MongoDB)"):
        docs = await coll.find(
            {"_id": {"$in": list(ids)}, **({} if deleted else {"deleted": {"$ne": True}})},
            projection=dict.fromkeys(ITEM_FIELDS, 1),
        ).to_list(None)
    mark = {} if unindexed else {NO_VECTORS: True}
    return {str(d["_id"]): {**_as_indexed(d), **mark} for d in docs}


def _as_indexed(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The stored fields of an item as the effects can read them: a category that is not a
    string (a document ingest refuses) is none, an owner that reads as no id
    (:func:`~opendisco._domain.readable_id`: a document, a list) too. A hide or a pass of an
    item stored with ``category: {...}`` failed its whole batch (an unhashable fatigue key:
    503), and every background retry and recovery sweep with it, the other members' events
    too; ``kind`` is kept as stored (``maybe_profile`` reads an odd one on the safe side)."""
    out = {f: doc[f] for f in ITEM_FIELDS if f in doc}
    if "category" in out and not isinstance(out["category"], str):
        out["category"] = None
    if "owner_id" in out and not readable_id(out["owner_id"]):
        out["owner_id"] = None
    return out


def item_vectors(
    items: Mapping[str, Mapping[str, Any]],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The content and behaviour vectors among ``items`` (as read for the effects)."""
    vecs = {i: d["embedding"] for i, d in items.items() if d.get("embedding")}
    behs = {i: d["behaviour"] for i, d in items.items() if d.get("behaviour")}
    return vecs, behs


async def settle_unsure(
    unsure: dict[str, Check], completed: list[str], partly: dict[str, set[str]]
) -> None:
    """Ask each effect whose write failed whether it landed all the same (its mark read
    back): landed, it joins ``completed`` (or ``partly``, for the events it counted) and the
    call taking the events over does not add it again. Each is asked until it answers."""
    for effect, check in list(unsure.items()):
        landed = await check()
        if landed is True:
            completed.append(effect)
        elif landed:
            partly[effect] = set(partly.get(effect, ())) | set(landed)
        del unsure[effect]


async def _events_marked(
    marked: Callable[[Iterable[str], str], Awaitable[set[str]]],
    counted: Sequence[Event],
    mark: str,
) -> set[str]:
    """The ids of ``counted`` whose item's counter keeps ``mark`` (``marked``: a store's)."""
    got = await marked((ev.item_id for ev in counted), mark)
    return {ev.id for ev in counted if ev.item_id in got}


async def _stored(write: Awaitable[Any], unsure: dict[str, Check], effect: str) -> None:
    """Await a MongoDB counter ``write`` of ``effect``; ``unsure[effect]`` (whether it landed
    all the same) is dropped once it is written, or when it failed before it was sent
    (:func:`~._store_fence.needs_fence`: it cannot land, and the check would have waited out
    another server selection before the claims could be given up)."""
    try:
        await write
    except BackendError as exc:
        if not needs_fence(exc):
            unsure.pop(effect, None)
        raise
    unsure.pop(effect, None)


def _engine_mark(mark: str, effect: str) -> str:
    """Pure: the mark a call's engine write of ``effect`` carries (exposure and trend write
    the same counter documents)."""
    return f"{mark[:12]}.{effect[0]}"


@dataclass
class EffectWriter:
    """The stores one event batch writes (see the module docstring)."""

    states: UserStateStore
    graph: ItemGraph
    users: UserGraph
    blocks: BlockStore
    inbound: InboundCounter
    exposure: ExposureStore
    cfg: EventsConfig
    fetch_items: ItemFetch  # items' vectors and categories by id (the engine's mget)
    count_served: bool = False
    #: the served behaviour model, which the states folded name (``_folding``; None: the
    #: unversioned one)
    behaviour: Followed | None = None

    def _plans(
        self,
        todo: Sequence[Event],
        items: Mapping[str, Mapping[str, Any]],
        done: Mapping[str, frozenset[str]],
    ) -> Callable[[Additive | None], Effects]:
        """The effects of ``todo`` (``None``), or of the events that have not had one additive
        effect yet; planned once when no earlier call completed anything for them."""

        def plan(evs: Sequence[Event]) -> Effects:
            return plan_effects(evs, items, self.cfg.weights, count_served=self.count_served)

        every = plan(todo)
        if not any(done.get(ev.id) for ev in todo):
            return lambda _effect: every
        return lambda effect: every if effect is None else plan(pending(todo, done, effect))

    async def fence_earlier(
        self,
        todo: Sequence[Event],
        items: Mapping[str, Mapping[str, Any]],
        earlier: dict[str, frozenset[str]],
        done: dict[str, frozenset[str]],
        record: Callable[..., Awaitable[None]],
    ) -> dict[str, frozenset[str]]:
        """Before a call applies events it took over: fence the counter writes their earlier
        holders marked (``earlier``: event id -> those holders' marks; the engine's in one
        ``_bulk``, ``_fence``; the inbound counters' per mark, :meth:`InboundCounter.fence`),
        which may still land — a paused node or store, an answer timed out, a holder killed
        before it could check. Those that landed join ``done`` and are recorded
        (``record(ids, effect=...)``); the others can no longer land, so this call's write
        counts each event once whatever the interleaving. ``earlier`` is emptied for them;
        returns what it held for them (``apply``'s ``earlier``: the co-engagement rows)."""
        asks: dict[tuple[str, str], list[tuple[str, Additive]]] = {}
        inbound: dict[str, list[Event]] = {}  # an earlier holder's mark -> its events to fence
        prior: dict[str, frozenset[str]] = {}
        for ev in todo:
            marks = earlier.pop(ev.id, frozenset())
            if not marks:
                continue
            prior[ev.id] = marks
            own = plan_effects([ev], items, self.cfg.weights, count_served=self.count_served)
            for effect, has in ((Additive.EXPOSURE, own.impressions), (Additive.TREND, own.trend)):
                if has and effect not in done.get(ev.id, ()):
                    for m in marks:
                        asks.setdefault((ev.item_id, _engine_mark(m, effect)), []).append(
                            (ev.id, effect)
                        )
            if own.inbound and Additive.INBOUND not in done.get(ev.id, ()):
                for m in marks:
                    inbound.setdefault(m, []).append(ev)
        landed: dict[Additive, set[str]] = {}
        for m, evs in sorted(inbound.items()):  # MongoDB's counters: fenced like the engine's
            got = await _events_marked(self.inbound.fence, evs, m[:12])
            landed.setdefault(Additive.INBOUND, set()).update(got)
        if asks and not self.exposure.ready:
            raise SearchBackendError("events: the exposure counters index is not ensured yet")
        for key in await self.exposure.fence(asks) if asks else ():
            for ev_id, effect in asks[key]:
                landed.setdefault(effect, set()).add(ev_id)
        for effect, ids in sorted(landed.items()):
            if not ids:
                continue
            await record(sorted(ids), effect=effect)
            for i in ids:
                done[i] = done.get(i, frozenset()) | {effect}
        return prior

    async def apply(
        self,
        todo: list[Event],
        items: dict[str, dict[str, Any]],
        now: datetime,
        out: EventsResult,
        done: Mapping[str, frozenset[str]],
        completed: list[str],
        partly: dict[str, set[str]] | None = None,
        record: Record | None = None,
        unsure: dict[str, Check] | None = None,
        mark: str | None = None,
        earlier: Mapping[str, Collection[str]] | None = None,
    ) -> None:
        """Write ``todo``'s effects; an additive one only for the events that have not had it
        (``done``: event id -> effects an earlier, failed call completed), each appended to
        ``completed`` once written (what a failing call records on its events) and, when it
        wrote something, passed to ``record`` at once (the claims store it on the events, so
        the call taking them over after a crash of this one skips it too). An engine counter
        written in part (:class:`~opendisco.PartialWrite`) adds, in ``partly``, the effect ->
        the events whose items it did write. A counter write that fails without an answer
        leaves in ``unsure`` the effect -> a check of whether it landed all the same (the
        answer lost on the way back): ``mark`` is stored with the write, the check reads it
        back (``True`` or the ids of the events it did count), see
        :meth:`EventProcessor._claim_and_apply`. ``earlier``: event id -> the marks of the
        calls that held it before (the co-engagement rows that keep one got its pairs)."""

        mark = None if mark is None else mark[:12]  # 48 random bits, fresh per apply
        unsure = {} if unsure is None else unsure

        async def landed(effect: str, wrote: bool) -> None:
            completed.append(effect)
            if wrote and record is not None:
                await record(effect)

        def mark_of(effect: str) -> str | None:
            return None if mark is None else _engine_mark(mark, effect)

        async def engine_effect(effect: str, write: Awaitable[Any] | None) -> Any:
            if write is None:
                return await landed(effect, False)
            counted = pending(todo, done, Additive(effect))
            if (m := mark_of(effect)) is not None:
                unsure[effect] = partial(_events_marked, self.exposure.landed, counted, m)
            try:
                result = await write
            except PartialWrite as exc:  # answered item by item: ``partly`` has the written
                unsure.pop(effect, None)
                maybe = [ev for ev in counted if ev.item_id in exc.unsure]
                if m is not None and maybe:  # ... and a retry round lost on the way may land
                    unsure[effect] = partial(_events_marked, self.exposure.landed, maybe, m)
                raise
            unsure.pop(effect, None)
            await landed(effect, True)
            return result

        plan = self._plans(todo, items, done)
        every = plan(None)
        impressions = plan(Additive.EXPOSURE).impressions
        trend = plan(Additive.TREND).trend
        if (impressions or trend) and not self.exposure.ready:
            raise SearchBackendError("events: the exposure counters index is not ensured yet")
        expo, tr = Additive.EXPOSURE, Additive.TREND
        engine = {
            expo: asyncio.ensure_future(
                engine_effect(
                    expo,
                    self.exposure.record(impressions, now=now, mark=mark_of(expo))
                    if impressions
                    else None,
                )
            ),
            tr: asyncio.ensure_future(
                engine_effect(
                    tr, self.exposure.record_trend(trend, mark=mark_of(tr)) if trend else None
                )
            ),
        }
        try:
            linked = {ev.id for ev in pending(todo, done, Additive.GRAPH)}
            links = await self._update_users(every.by_user, items, now, linked)
            pairs = [pair for _, pair in links]
            if pairs:
                if mark is not None:
                    unsure[Additive.GRAPH] = partial(self.graph.fence, pairs, mark)
                held = [(earlier or {}).get(ev_id, frozenset()) for ev_id, _ in links]
                add = self.graph.add(pairs, now, mark=mark, landed_if=held)
                await _stored(add, unsure, Additive.GRAPH)
            await landed(Additive.GRAPH, bool(pairs))
            if every.likes:
                out.mutual += await self.users.add_likes(every.likes, now)
            if every.blocks:
                await self.blocks.add(every.blocks, now)
            inbound = plan(Additive.INBOUND).inbound
            if inbound:
                if mark is not None:
                    counted = pending(todo, done, Additive.INBOUND)
                    fence = self.inbound.fence
                    unsure[Additive.INBOUND] = partial(_events_marked, fence, counted, mark)
                await _stored(self.inbound.add(inbound, now, mark=mark), unsure, Additive.INBOUND)
            await landed(Additive.INBOUND, bool(inbound))
        finally:
            await asyncio.wait(engine.values())
            for effect, fut in engine.items():
                exc = None if fut.cancelled() else fut.exception()
                if isinstance(exc, PartialWrite) and partly is not None:
                    # counters are per item: an event's share was written with its item's
                    written = pending(todo, done, effect)
                    partly[effect] = {ev.id for ev in written if ev.item_id not in exc.unwritten}
        capped = engine[Additive.EXPOSURE].result()  # the engine's error, when it failed
        engine[Additive.TREND].result()
        out.capped = sorted(set(out.capped) | set(capped or []))

    async def _update_users(
        self,
        by_user: Mapping[str, list[dict[str, Any]]],
        items: dict[str, dict[str, Any]],
        now: datetime,
        linked: set[str],
    ) -> list[tuple[str, tuple[str, str, float]]]:
        """Read-merge-write of every touched user under their leases (see user_state); returns
        the co-engagement pairs of the new positives among ``linked`` (event ids, each with its
        pair: :func:`~._graph.co_engagement_links`), computed
        from the states read inside the leases (a concurrent batch of the same member is
        either before or after this one)."""
        model = await self.behaviour.version() if self.behaviour is not None else None
        async with self.states.locked(by_user) as held:
            states = await self.states.get_many(by_user, salvage=True)  # fresh: in the lease
            links = co_engagement_links(states, by_user, self.cfg.graph_fanout, linked)
            need = {e["id"] for st in states.values() for e in (*st.positives, *st.negatives)}
            missing = sorted(need - set(items))
            if missing:  # another writer added positives since our first read
                items.update(await self.fetch_items(missing))
            cats = {i: (d.get("category") or None) for i, d in items.items()}
            vecs, behs = item_vectors(items)
            blind = any(d.get(NO_VECTORS) for d in items.values())  # keep the vectors
            cfg = self.cfg.user_state

            def merged(st: UserState, evs: list[dict[str, Any]]) -> UserState:
                new = merge_events(st, evs, cats, cfg)
                if blind:  # repaired by the member's next event or the recovery sweep
                    return replace(new, updated_at=now, vectors_stale=True)
                return recompute(new, vecs, behs, now, cfg, model)

            await self.states.save_many(
                (merged(states[u], evs) for u, evs in by_user.items()),
                previous=states,
                held=held,
            )
        return links
