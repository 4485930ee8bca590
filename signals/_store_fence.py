"""Fencing a MongoDB write whose outcome is unknown (the inbound counters, the co-engagement
rows): did it land, and if not, make sure it never does — what ``_fence`` does for the engine.

A write held on its way to the store past its client's timeout still reaches it afterwards
(``TcpProxy.hold_if``: the failing call's check found nothing, the call taking its events over
counted them, then the held write counted them again). So a marked write carries a guard,
``$pop: {"fz.<mark>": 1}`` (:func:`guard`): a no-op on a document without that field, an error
— the whole update refused — where a fence put a date there. A fence (:func:`fence_marks`)
``$set``s ``fz.<mark>`` on each document (created when missing: a late upsert must not create
it either); the caller then reads whether the write landed from its own record of marks (its
mark kept, ``ms``). The filters are ``_id`` only: an unpatched FerretDB 1.24 scans the whole
collection for a filter on any other field (12 to 20 ms per update at 20,000 documents,
measured), so the condition is in the update. FerretDB's updates are not atomic (it rewrites
the document: of 100 concurrent updates conditional on one value, 3 to 5 applied); a late write
and a fence racing on one document leave it as one of them alone would, and the read tells which.

Fenced marks are few (a failed write's, a taken-over one's); a fence drops those of the
documents it fences that are older than :data:`FENCE_KEPT`.

FerretDB 1.24 answers a bulk whose update was refused in a form pymongo cannot read (a
``KeyError``); :func:`write_guarded` reports it as the refusal it is.

Whole documents read, merged and written back under leases (user states, member blocks, inbox
rows) are fenced the same way (:func:`replace_fenced`): a write held past its client's timeout
landed after the next holder's newer document and put the older one back (a like, a hide, a
block lost: the item or member shown again). The mark of such a write is its lease's token
(fencing tokens): the writer whose write failed fences it before it gives its leases up; when
that fence fails too (the store unreachable at that moment), it keeps its leases (left to
expire, :meth:`~opendisco._store.Lease.keep`), and whoever takes them over fences the
previous holder's token on those documents before freeing them (:func:`fence_taken_over`,
the ``take_over`` of :func:`~opendisco._store.lease`; :func:`lease_documents`) — so is a
holder that crashed, or
froze past its lease, fenced. Either way the next holder reads the landed write or a document
the write can no longer reach. The normal path costs nothing more (the mark is the token the
lease already has); a takeover costs one fence (a ``find`` and an upsert per document).

What remains: FerretDB's updates are not atomic — a late write whose update the server is
applying while the fence is applied can still land after it (the window of one update on the
server, not of a hold on the network), and the next holder reads it only if that is before
its read. A write held longer than :data:`FENCE_KEPT` after its fence lands.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import UpdateOne

from opendisco._backend import backend_errors
from opendisco._exceptions import BackendError, StoreBackendError, StoreUnreachable
from opendisco._store import Lease, TakeOver, bulk_write_chunked, lease

__all__ = [
    "FENCED",
    "FENCE_KEPT",
    "fence_marks",
    "fence_taken_over",
    "guard",
    "lease_documents",
    "needs_fence",
    "replace_fenced",
    "write_guarded",
]

#: the field of a document's fenced marks (``{mark: when}``)
FENCED = "fz"
#: a fenced mark is kept this long: a write held on its way longer could still count
FENCE_KEPT = timedelta(days=1)


def needs_fence(exc: BaseException) -> bool:
    """Pure: whether a write that failed with ``exc`` may land all the same, so it is fenced
    (or read back); not when no server could be selected for it (:class:`StoreUnreachable`:
    never sent — a cut store, after the first write failed with the connection's error, fails
    the next ones on server selection, and a fence then waited out another selection while
    the writer held its leases)."""
    return not isinstance(exc, StoreUnreachable)


def guard(mark: str) -> dict[str, Any]:
    """Pure: the update operator that refuses a write of ``mark`` once it is fenced."""
    return {"$pop": {f"{FENCED}.{mark}": 1}}


async def fence_marks(
    coll: Any, ids: Iterable[str], mark: str, now: datetime | None = None
) -> None:
    """Fence ``mark`` on the documents ``ids`` (one ``_id`` upsert each, chunked): a write
    guarded by it (:func:`guard`) that has not landed never will."""
    wanted = list(dict.fromkeys(ids))
    if not wanted:
        return
    at = now or datetime.now(UTC)
    with backend_errors(f"{coll.name} fence failed"):
        docs = await coll.find({"_id": {"$in": wanted}}, projection={FENCED: 1}).to_list(None)
    old = {str(d["_id"]): d.get(FENCED) or {} for d in docs}
    ops = []
    for i in wanted:
        stale = {
            f"{FENCED}.{m}": ""
            for m, when in old.get(i, {}).items()
            if m != mark
            and isinstance(when, datetime)
            and when.replace(tzinfo=UTC) < at - FENCE_KEPT
        }
        update: dict[str, Any] = {"$set": {f"{FENCED}.{mark}": at}}
        if stale:
            update["$unset"] = stale
        ops.append(UpdateOne({"_id": i}, update, upsert=True))
    await bulk_write_chunked(coll, ops)


async def write_guarded(coll: Any, ops: Sequence[Any]) -> None:
    """:func:`~opendisco._store.bulk_write_chunked` of guarded updates: one refused (its mark
    fenced: this call's events were taken over) fails it as a store error on every backend."""
    try:
        await bulk_write_chunked(coll, ops)
    except KeyError as exc:  # FerretDB 1.24's answer to a refused update of the bulk
        raise StoreBackendError(f"{coll.name}: a write refused (its mark fenced)") from exc


def rewrite(doc: Mapping[str, Any], mark: str, optional: Iterable[str] = ()) -> dict[str, Any]:
    """Pure: the update that makes ``doc`` the whole document (but its fenced marks; the
    ``optional`` fields it lacks removed), refused once ``mark`` is fenced."""
    update: dict[str, Any] = {"$set": {k: v for k, v in doc.items() if k != "_id"}, **guard(mark)}
    gone = {f: "" for f in optional if f not in doc}
    if gone:
        update["$unset"] = gone
    return update


async def replace_fenced(
    coll: Any,
    docs: Sequence[Mapping[str, Any]],
    optional: Iterable[str] = (),
    held: Lease | None = None,
) -> None:
    """Write the whole documents ``docs`` (upserts by ``_id``; ``optional``: fields a document
    may lack, removed where it does) under a mark — the token of the leases ``held`` they are
    written under (one write per lease: once fenced, its token refuses any later one), a fresh
    one without; when the write fails (unless it was never sent: :func:`needs_fence`), fence
    the mark before re-raising: the caller, still holding its leases, knows that its write
    either landed or never will, so the next holder's newer document cannot be undone by it.
    When the fence fails too, the leases are kept (left to expire): their taker fences the
    token (:func:`fence_taken_over`)."""
    if not docs:
        return
    mark = held.token if held is not None else uuid.uuid4().hex
    optional = tuple(optional)
    ops = [UpdateOne({"_id": d["_id"]}, rewrite(d, mark, optional), upsert=True) for d in docs]
    try:
        await write_guarded(coll, ops)
    except BackendError as exc:
        if needs_fence(exc):
            try:
                await fence_marks(coll, [str(d["_id"]) for d in docs], mark)
            except BackendError:
                if held is not None:
                    held.keep()
                raise
        raise


def fence_taken_over(coll: Any) -> TakeOver:
    """The ``take_over`` of the leases ``coll``'s whole documents are written under
    (:func:`~opendisco._store.lease`): fence each previous holder's token on its documents,
    so a write of it still on its way (its own fence failed, or it crashed or froze past its
    lease) never lands."""

    async def fence(previous: Mapping[str, str]) -> None:
        by_owner: dict[str, list[str]] = defaultdict(list)
        for doc_id, owner in previous.items():
            by_owner[owner].append(doc_id)
        for owner, ids in by_owner.items():
            await fence_marks(coll, ids, owner)

    return fence


def lease_documents(
    coll: Any, locks: Any, ids: Iterable[str], *, lease_s: float, wait_s: float
) -> AbstractAsyncContextManager[Lease]:
    """The leases (in ``locks``) of ``coll``'s documents ``ids``, read, merged and written back
    under them with :func:`replace_fenced` (``held=``): a taker of one fences its previous
    holder's token first (:func:`fence_taken_over`)."""
    take_over = fence_taken_over(coll)
    return lease(locks, ids, lease_s=lease_s, wait_s=wait_s, what=coll.name, take_over=take_over)
