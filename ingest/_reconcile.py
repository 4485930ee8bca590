"""Reconciliation: repair what the polling watermark cannot see, by comparing both sides.

Polling sync sees a change only through ``updated_at``. A hard delete (``delete_one``) leaves
nothing to poll, and a write whose ``updated_at`` is older than the watermark minus the
overlap (a backdated write, a restore, a writer's clock that jumped back) is never read.
Reconciliation streams ``_id`` + ``version`` from MongoDB (one cursor in ``_id`` order, only
those two fields and ``deleted``) and ``_id`` + ``_version`` from the index (``search_after``
on the ``id`` keyword, the same byte order), merges the two sorted streams in constant memory
and repairs, through the ordinary external-versioned apply path:

* in the index, gone from MongoDB (hard delete): confirmed by a point read (``_id $in``,
  pushed down by FerretDB too) and deleted at the index's version + 1;
* in MongoDB, absent from the index or at a newer version (backdated writes, tombstones the
  index still serves): the full document is read by ``_id $in`` and applied like any change
  (validated → dead letter and removal when invalid; embedded; versioned) — except a document
  absent because it was refused at this very version: its dead letter is still open (one
  ``_id $in`` read of ``dead_letters`` per page), so it is counted as
  ``already_dead_lettered``, not as ``missing``, and not applied again;
* in the index while MongoDB's copy has no usable ``version``: dead-lettered and removed, at
  the version the index holds (``external_gte``: the fix's next version indexes at once);
* the index newer than MongoDB (a version went backwards: MongoDB restored from a backup, a
  document deleted and created again at version 1, a migration that rewrote it): counted as
  ``ahead`` and, once a point read confirms MongoDB's copy is still older than the indexed
  one, the indexed copy is deleted at the version the scan read + 1 — a 409 when the index
  moved on since (a newer write of MongoDB's is there: left alone). An external version can
  only go up, so MongoDB's older copy cannot be written over it: the engine keeps the
  delete's tombstone ``index.gc_deletes`` (60 s), then the document reads as ``missing`` and
  a later pass applies MongoDB's copy at its own version. Meanwhile the document is absent
  (never the stale copy the engine held: a member made unavailable at version 1 after
  version 5 was indexed is no longer served anywhere).

Then the open dead letters of the partitions are swept (``_letters.sweep``): those whose
document is gone, tombstoned or indexed at their version are resolved
(``dead_letters_resolved``), and the records resolved more than ``dead_letter_days`` ago are
deleted (``dead_letters_purged``, the whole collection's: the delete is idempotent).

Races with concurrent writes are harmless: every repair re-reads the document and every
write carries a version, so a repair never overwrites a newer copy. Sync runs a pass every
``sync_reconcile_interval`` seconds (over the partitions it holds), so such a change is
repaired within that interval plus one pass; ``opendisco verify --repair`` runs one now, and
``opendisco sync --once`` after its pass.

``remove_gone`` is the hard-delete half alone, over a rebuild's new index before its swap:
the documents its read found and a hard delete removed since (no catch-up sees them).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from opendisco._backend import backend_errors, whole_search
from opendisco._exceptions import IndexStateError
from opendisco._settings import Settings

from ._apply import Counters, Prepared, write
from ._bulk import Action, BulkWriter, patiently
from ._feed import ChangeBatch, HardDelete
from ._letters import open_versions, sweep
from ._letters_admin import purge_resolved
from ._schema import is_tombstone, source_version
from ._store import items_collection, stream

__all__ = ["ReconcileReport", "reconcile", "remove_gone"]

PAGE = 1000


@dataclass(kw_only=True)
class ReconcileReport(Counters):
    """What one reconciliation pass compared, found and applied (the counters)."""

    mongo_docs: int = 0
    index_docs: int = 0
    missing: int = 0  # live in MongoDB, absent from the index
    behind: int = 0  # the index holds an older version
    gone: int = 0  # in the index, deleted from MongoDB (hard delete)
    unversioned: int = 0  # in the index, MongoDB's copy has no usable version
    ahead: int = 0  # the index holds a newer version than MongoDB (its copy removed)
    partitions: list[int] = field(default_factory=list)  # the partitions compared
    took_s: float = 0.0

    @property
    def repairs(self) -> int:
        return self.missing + self.behind + self.gone + self.unversioned + self.ahead


def _version(doc: dict[str, Any]) -> int | None:
    return source_version(doc.get("version"))  # what validation accepts (2.0 is 2)


async def _mongo_side(
    coll: Any, owns: Callable[[Any], bool]
) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    fields = {"version": 1, "deleted": 1}
    async with stream(coll, {}, PAGE, sort=[("_id", 1)], projection=fields) as batches:
        async for docs in batches:
            for doc in docs:
                key = doc.get("_id")
                # the index holds string ids only; other ids are dead-lettered by sync
                if isinstance(key, str) and owns(key):
                    yield key, doc


async def _index_side(
    client: Any, index: str, settings: Settings, owns: Callable[[Any], bool], retry_for: float = 0.0
) -> AsyncIterator[tuple[str, int]]:
    after: list[Any] | None = None
    while True:
        body: dict[str, Any] = {
            "size": PAGE,
            "sort": [{"id": "asc"}],
            "_source": False,
            "version": True,
            "query": {"match_all": {}},
        }
        if after:
            body["search_after"] = after
        with backend_errors("reading index versions failed"):
            resp = await patiently(
                lambda body=body: client.search(index=index, body=body),
                settings,
                retry_for=retry_for,
            )
        # a failed shard's documents read as missing from the index (indexed again) and a
        # short page as the scan's end (the later ones unchecked): no repair on that view
        hits = whole_search(resp, "reading index versions")["hits"]["hits"]
        for hit in hits:
            if owns(hit["_id"]):
                yield hit["_id"], int(hit["_version"])
        if len(hits) < PAGE:
            return
        after = hits[-1]["sort"]


async def _ordered(pairs: AsyncIterator[tuple[str, Any]], side: str) -> AsyncIterator[Any]:
    """``pairs`` checked to be strictly increasing (the merge is only right if both are)."""
    last: str | None = None
    async for key, value in pairs:
        if last is not None and key <= last:
            raise IndexStateError(f"reconcile: {side} ids out of order ({last!r} then {key!r})")
        last = key
        yield key, value


class _Repairs:
    """Ids to repair, flushed through the syncer's apply path a page at a time."""

    def __init__(self, syncer: Any, report: ReconcileReport, guard: Callable[[], None]) -> None:
        self.syncer = syncer
        self.report = report
        self.guard = guard
        self.apply: list[str] = []  # read and apply MongoDB's current copy
        self.remove: list[str] = []  # delete at the index's version + 1 unless back in MongoDB
        self.missing: dict[str, int | None] = {}  # of apply: absent from the index, at version
        self.regressed: dict[str, int] = {}  # the index ahead of MongoDB: id → indexed version

    async def add(
        self,
        *,
        apply: str | None = None,
        remove: str | None = None,
        missing: bool = False,
        version: int | None = None,
        regressed: tuple[str, int] | None = None,
    ) -> None:
        if apply is not None:
            self.apply.append(apply)
            if missing:
                self.missing[apply] = version
        if remove is not None:
            self.remove.append(remove)
        if regressed is not None:
            self.regressed[regressed[0]] = regressed[1]
        pending = len(self.apply) + len(self.remove) + len(self.regressed)
        if pending >= self.syncer.settings.sync_batch_size:
            await self.flush()

    async def flush(self) -> None:
        await self._unwind()
        refused = await self._refused()
        ids, removals = [k for k in self.apply if k not in refused] + self.remove, set(self.remove)
        self.apply, self.remove = [], []
        if not ids:
            return
        current = await _read(items_collection(self.syncer.db, self.syncer.settings), ids)
        docs = [current[k] for k in ids if k in current]
        # gone for good, or back without a usable version: out of the index (the latter is
        # also dead-lettered when its document goes through the apply step)
        deletes = [
            HardDelete(k, gone=k not in current)
            for k in removals
            if k not in current or _version(current[k]) is None
        ]
        self.guard()  # still the holder of these partitions
        batch = ChangeBatch(docs=docs, hard_deletes=deletes)
        self.report.add(await self.syncer.apply(batch, fresh_only=False))

    async def _unwind(self) -> None:
        """Delete the indexed copies newer than MongoDB's, at the version the scan read + 1,
        those MongoDB still holds at an older version now (read again: a write since the scan
        may have caught up, and its copy in the index is MongoDB's)."""
        regressed, self.regressed = self.regressed, {}
        if not regressed:
            return
        current = await _read(items_collection(self.syncer.db, self.syncer.settings), regressed)
        actions = [
            Action("delete", k, indexed + 1, settles="").with_data()
            for k, indexed in regressed.items()
            if k in current and (_version(current[k]) or 0) < indexed
        ]
        if not actions:
            return
        self.guard()  # still the holder of these partitions
        self.syncer.applied.forget(a.id for a in actions)  # sync may apply MongoDB's copy
        counters = await write(
            Prepared(actions=actions),
            self.syncer.writer,
            self.syncer.db,
            source="reconcile",
            seen=len(actions),
        )
        self.report.add(counters)

    async def _refused(self) -> set[str]:
        """The missing ids whose dead letter is open at their version (refused already)."""
        missing, self.missing = self.missing, {}
        if not missing:
            return set()
        coll = self.syncer.settings.items_collection
        held = await open_versions(self.syncer.db, coll, list(missing))
        refused = {k for k, version in missing.items() if k in held and held[k] == version}
        self.report.missing += len(missing) - len(refused)
        self.report.already_dead_lettered += len(refused)
        return refused


async def _read(coll: Any, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    ids = list(ids)
    with backend_errors("reconcile read failed"):
        for k in range(0, len(ids), PAGE):
            async for doc in coll.find({"_id": {"$in": ids[k : k + PAGE]}}):
                out[doc["_id"]] = doc
    return out


async def reconcile(
    syncer: Any,
    owns: Callable[[Any], bool] = lambda _: True,
    guard: Callable[[], None] = lambda: None,
) -> ReconcileReport:
    """One pass over the ids ``owns`` accepts; ``syncer`` is a :class:`~._sync.Syncer`
    (its clients, embedder, writer and apply path); ``guard`` raises when the caller may no
    longer write (its leases lapsed) and runs before every repair."""
    t0 = time.perf_counter()
    report = ReconcileReport()
    repairs = _Repairs(syncer, report, guard)
    settings = syncer.settings
    mongo = aiter(_ordered(_mongo_side(items_collection(syncer.db, settings), owns), "MongoDB"))
    index = aiter(
        _ordered(_index_side(syncer.client, settings.index_alias, settings, owns), "index")
    )
    m = await anext(mongo, None)
    x = await anext(index, None)
    while m is not None or x is not None:
        if x is None or (m is not None and m[0] < x[0]):
            key, doc = m  # type: ignore[misc]
            report.mongo_docs += 1
            if not is_tombstone(doc):  # counted as missing at the flush (unless refused)
                await repairs.add(apply=key, missing=True, version=_version(doc))
            m = await anext(mongo, None)
        elif m is None or x[0] < m[0]:
            report.index_docs += 1
            report.gone += 1
            await repairs.add(remove=x[0])
            x = await anext(index, None)
        else:
            (key, doc), (_, indexed) = m, x
            report.mongo_docs += 1
            report.index_docs += 1
            version = _version(doc)
            if version is None:
                report.unversioned += 1
                await repairs.add(remove=key)
            elif version > indexed:
                report.behind += 1
                await repairs.add(apply=key)
            elif version < indexed:
                report.ahead += 1
                await repairs.add(regressed=(key, indexed))
            m, x = await anext(mongo, None), await anext(index, None)
    await repairs.flush()
    report.dead_letters_resolved += await sweep(
        syncer.db,
        items_collection(syncer.db, syncer.settings),
        syncer.writer.versions,
        source="reconcile",
        owns=owns,
    )
    report.dead_letters_purged += await purge_resolved(
        syncer.db, syncer.settings.items_collection, syncer.settings.dead_letter_days
    )
    report.took_s = time.perf_counter() - t0
    return report


async def _index_only(
    mongo: AsyncIterator[tuple[str, Any]], index: AsyncIterator[tuple[str, int]]
) -> AsyncIterator[str]:
    """The ids of the sorted ``index`` stream that the sorted ``mongo`` stream lacks."""
    m, x = await anext(mongo, None), await anext(index, None)
    while x is not None:
        if m is not None and m[0] < x[0]:
            m = await anext(mongo, None)
        elif m is not None and m[0] == x[0]:
            m, x = await anext(mongo, None), await anext(index, None)
        else:
            yield x[0]
            x = await anext(index, None)


async def remove_gone(db: Any, settings: Settings, writer: BulkWriter, *, source: str) -> Counters:
    """Delete from ``writer``'s index the documents MongoDB no longer holds, at the index's
    version + 1 (their dead letters resolved): what a rebuild does before its swap, for the
    documents its read found and a hard delete removed before the swap — no catch-up sees
    a hard delete (before, the new index served them until a reconciliation)."""
    coll = items_collection(db, settings)
    everything: Callable[[Any], bool] = lambda _: True  # noqa: E731
    mongo = aiter(_ordered(_mongo_side(coll, everything), "MongoDB"))
    indexed = _index_side(writer.client, writer.index, settings, everything, writer.retry_for)
    index = aiter(_ordered(indexed, "index"))
    counters, page = Counters(), []
    async for key in _index_only(mongo, index):
        page.append(key)
        if len(page) >= PAGE:
            counters.add(await _delete_gone(coll, writer, db, page, source))
            page = []
    counters.add(await _delete_gone(coll, writer, db, page, source))
    return counters


async def _delete_gone(
    coll: Any, writer: BulkWriter, db: Any, ids: list[str], source: str
) -> Counters:
    if not ids:
        return Counters()
    current = await _read(coll, ids)  # confirmed gone (not written since the stream read)
    gone = [k for k in ids if k not in current]
    held = await writer.versions(gone)
    actions = [
        Action("delete", k, held[k] + 1, settles="any").with_data() for k in gone if k in held
    ]
    return await write(Prepared(actions=actions), writer, db, source=source, seen=len(actions))
