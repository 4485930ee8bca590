"""Step 2 of an event batch (``_processor``): the items its events are about — kind, owner,
category and vectors — read for the effects, from the engine or, where it cannot say, from
MongoDB, the source of truth; the events those reads reject, and the one event each id names
among the others."""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from opensearchpy import AsyncOpenSearch

from opendisco._backend import backend_errors
from opendisco._domain import maybe_profile, readable_id
from opendisco._exceptions import SearchBackendError
from opendisco._settings import Settings

from ._apply import stored_items
from ._event import ITEM, Event, EventsResult, about, reuse_reason, stored_about
from ._given_up import mark_dropped

__all__ = ["about_items", "event_items", "one_per_id", "stored_about_gone", "unknown_item"]

log = logging.getLogger("opendisco.signals")


async def event_items(
    client: AsyncOpenSearch,
    coll: Any,
    settings: Settings,
    ids: Sequence[str],
    about: Collection[str] = (),
) -> dict[str, dict[str, Any]]:
    """The items' vectors, category, kind and owner from the engine (one ``mget``); when
    the engine fails, all but the vectors from MongoDB (:func:`~._apply.stored_items`):
    a member can block, pass and hide while the engine is down. So are the documents the
    ``mget`` answers with an error (a shard that rejected or failed its part): read as
    missing, their events were rejected as about an unknown item, and lost. And so are
    the items events are ``about`` that the engine does not hold (yet): an item is
    unknown when MongoDB, the source of truth, does not hold it. A profile created since
    the last sync was rejected as unknown when its member was hidden or liked, and, once
    synced, shown to the member who hid or liked it (and that member to the one hidden).
    (Other ids, the members' earlier positives, are read for their vectors: MongoDB has
    none of those to add.)"""
    if not ids:
        return {}
    try:
        # no items index (a node behind on the cluster state, or none yet) is a failed read,
        # not "the engine holds none": read so, the members' positives had no vectors and
        # their states' vectors were folded again from none (wiped, not marked stale)
        with backend_errors("item lookup for events failed"):
            resp = await client.mget(
                index=settings.index_alias,
                body={"ids": list(ids)},
                params={
                    "_source_includes": "embedding,behaviour,category,kind,owner_id",
                    "realtime": "true",
                },
                request_timeout=settings.events_engine_timeout_s,
            )
    except SearchBackendError as exc:
        log.warning("event items read from MongoDB, vectors kept (engine: %.200s)", exc)
        return await stored_items(coll, ids)
    docs = resp["docs"]
    out = {d["_id"]: d.get("_source") or {} for d in docs if d.get("found")}
    if failed := [str(d["_id"]) for d in docs if d.get("error")]:
        # a shard that failed to answer (e.g. 429 from its get queue) is not "unknown item"
        first = next(d["error"] for d in docs if d.get("error"))
        log.warning("%d event items read from MongoDB (engine: %.200s)", len(failed), first)
        out.update(await stored_items(coll, failed))
    if unindexed := [str(i) for i in about if i not in out and i not in failed]:
        out.update(await stored_items(coll, unindexed, unindexed=True))
    return out


async def stored_about_gone(
    events: Any,
    coll: Any,
    valid: list[tuple[int, Event]],
    items: dict[str, Any],
    require_known: bool,
    out: EventsResult,
) -> list[tuple[int, Event]]:
    """The events of ``valid`` about an item no store holds as an item any more (deleted
    since) whose id is already stored for them, settled before the item check; returns
    ``valid`` without the ones answered here:

    - applied: a duplicate (a retry of an applied event, its first answer lost, was
      answered ``rejected``: read as not applied, its effects counted);
    - unapplied, its deleted document still saying what the effects need, or else the
      event's own record of it (:data:`~._event.ITEM`, kept since it was stored: the item
      deleted from MongoDB itself, or a tombstone without ``kind`` or a profile's without a
      readable owner): its item added to ``items``, completed by the claims' step like any
      retry (its effects may have landed in part; rejected, it stayed unapplied for good,
      its client answered ``rejected``: bench/chaos.py, a profile's inbound likes and its
      liker's likes held a like rejected — seed 41 again with the item deleted outright);
    - unapplied otherwise (stored without that record, before it was kept): still unknown,
      rejected by :func:`about_items`, and marked dropped first when ``require_known``
      (:func:`~._given_up.mark_dropped`);
    - not stored for it (a new event, or another's under a stored id): rejected here as about
      an unknown item when ``require_known`` — what is read back completes the events stored
      for it, nothing else (a new like in the batch of a completed one was applied to a
      profile deleted before it was posted)."""
    gone = [(i, ev) for i, ev in valid if ev.item_id not in items]  # an id may repeat
    if not gone:
        return valid
    fields = {"item_id": 1, "type": 1, "user_id": 1, "applied": 1, ITEM: 1}
    with backend_errors("event lookup failed (MongoDB)"):
        ids = list(dict.fromkeys(ev.id for _, ev in gone))
        stored = {
            d["_id"]: d for d in await events.find({"_id": {"$in": ids}}, fields).to_list(None)
        }
    # the same id stored for another item is a reuse, rejected by the claims' step
    same = [
        (i, ev, d) for i, ev in gone if (d := stored.get(ev.id)) and d.get("item_id") == ev.item_id
    ]
    retry = [(i, ev, d) for i, ev, d in same if stored_about(d) == about(ev)]  # else a reuse
    done = {i for i, _, d in retry if d.get("applied")}
    if open_ := sorted({ev.item_id for _, ev, d in same if not d.get("applied")}):
        docs = await stored_items(coll, open_, unindexed=True, deleted=True)
        items.update((i, doc) for i, doc in docs.items() if _still_says(doc))
    for _, ev, d in retry:  # deleted outright, or its tombstone says too little
        kept = d.get(ITEM)
        if ev.item_id not in items and isinstance(kept, Mapping) and _still_says(kept):
            items[ev.item_id] = dict(kept)
    unknown: set[int] = set()
    if require_known:  # the very event its call is answered rejected for
        left = [ev for i, ev, _ in retry if i not in done and ev.item_id not in items]
        await mark_dropped(events, {ev.id: unknown_item(ev.item_id) for ev in left})
        # an item read back here completes the events stored for it, nothing else: a new
        # event about it (or another's about it under a stored id) is about an unknown item
        completing = {i for i, _, _ in retry}
        unknown = {i for i, _ in gone if i not in completing}
        out.rejected += [(i, unknown_item(ev.item_id)) for i, ev in gone if i in unknown]
    out.duplicates += len(done)
    return [(i, ev) for i, ev in valid if i not in done and i not in unknown]


def unknown_item(item_id: str) -> str:
    """Pure: the reason an event about an item no store holds is rejected with."""
    return f"item_id: unknown item {item_id!r}"


def _still_says(doc: Mapping[str, Any]) -> bool:
    """Pure: a deleted item's document still names its kind and, for what may be a profile,
    its owner (what the effects of an event about it need)."""
    if doc.get("kind") is None:
        return False
    return not maybe_profile(doc["kind"]) or readable_id(doc.get("owner_id"))


def about_items(
    valid: list[tuple[int, Event]],
    items: Mapping[str, Mapping[str, Any]],
    require_known: bool,
    out: EventsResult,
) -> list[tuple[int, Event]]:
    """Pure: the ``(index, event)`` of ``valid`` whose item may be the subject of an event;
    the others are added to ``out.rejected`` with the reason. An item no store holds is
    unknown (when ``require_known``); the member's own profile is not theirs to engage
    with: a like, match or message on it added to its trending count and inbound attention
    (a member lifting their own profile), a click or a hide put it in the member's own
    positives or negatives; serving never shows a member their own profile."""
    keep = []
    for i, ev in valid:
        item = items.get(ev.item_id)
        if item is None and require_known:
            out.rejected.append((i, unknown_item(ev.item_id)))
        elif item is not None and item.get("owner_id") == ev.user_id:
            out.rejected.append((i, "item_id: the member's own profile (an event about oneself)"))
        else:
            keep.append((i, ev))
    return keep


def one_per_id(valid: list[tuple[int, Event]], out: EventsResult) -> list[tuple[int, Event]]:
    """Pure: the first event of each id among ``valid`` (the events of a batch not rejected
    so far, in batch order); a later one about the same thing is a repeat kept in
    ``out.repeats``, answered as its first (:meth:`EventsResult.settle_repeats`), one about
    something else is rejected. An event rejected before (an unknown item, the member's own
    profile) names nothing: a batch posting one id for it and for a valid event lost the
    valid one, rejected as a reuse of an id nothing was stored under (bench/chaos.py, seed
    41)."""
    kept: list[tuple[int, Event]] = []
    firsts: dict[str, tuple[int, Event]] = {}
    for i, ev in valid:
        if (first := firsts.get(ev.id)) is None:
            firsts[ev.id] = (i, ev)
            kept.append((i, ev))
        elif about(first[1]) == about(ev):
            out.repeats.setdefault(first[0], []).append(i)
        else:
            out.rejected.append((i, reuse_reason(about(first[1]), ev)))
    return kept
