"""Fencing a MongoDB write whose outcome is unknown (the inbound counters, the co-engagement
rows): did it land, and if not, make sure it never does — what ``_fence`` does for the engine.

A write held on its way to the store past its client's timeout still reaches it afterwards
(``TcpProxy.hold_if``: the failing call's check found nothing, the call taking its events over
counted them, then the held write counted them again). So a marked write carries a guard,
``$pop: {"fz.<mark>": 1}`` (:func:`guard`): a no-op on a document without that field, an error
— the whole update refused — where a fence put a date there. A fence (:func:`fence_marks`)
``$set``s ``fz.<mark>`` on each document (created when missing: a late upsert must not create
it either); the caller then reads whether the write landed from its own record of marks (its
mark kept, ``ms``). The filters are ``_id`` only: FerretDB 1.24 scans the whole collection for
a filter on any other field (12 to 20 ms per update at 20,000 documents, measured), so the
condition is in the update. FerretDB's updates are not atomic (it rewrites the document:
of 100 concurrent updates conditional on one value, 3 to 5 applied); a late write and a fence
racing on one document leave it as one of them alone would, and the read tells which.

Fenced marks are few (a failed write's, a taken-over one's); a fence drops those of the
documents it fences that are older than :data:`FENCE_KEPT`.

FerretDB 1.24 answers a bulk whose update was refused in a form pymongo cannot read (a
``KeyError``); :func:`write_guarded` reports it as the refusal it is.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import UpdateOne

from opendisco._backend import backend_errors
from opendisco._exceptions import StoreBackendError
from opendisco._store import bulk_write_chunked

__all__ = ["FENCED", "FENCE_KEPT", "fence_marks", "guard", "write_guarded"]

#: the field of a document's fenced marks (``{mark: when}``)
FENCED = "fz"
#: a fenced mark is kept this long: a write held on its way longer could still count
FENCE_KEPT = timedelta(days=1)


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
