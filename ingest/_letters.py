"""Dead letters: what ingest refused, with the reason, open until the document is fixed or gone.

One record per source document (items collection + ``_id`` with its BSON type: ``424242`` and
``"424242"`` are two documents): ``{_id, collection, source, stage, doc_id, version, reason,
doc, at, first_at}`` (``doc``: the refused document, a copy up to 1 MiB, else its id and
size: ``_letter_copy``; and ``doc_key``, the id as BSON bytes, when ``doc_id`` holds it in
another form) plus, once resolved, ``{resolved_at, resolved_by, resolved_version,
resolved_source}``. The ``_id`` is :func:`letter_key`, so every lookup ingest makes is an
``_id $in`` read, the one filter FerretDB pushes down.

Lifecycle. A refusal at version *v* opens the record, or moves it to *v* with the new reason,
unless the record already knows better (an open refusal of a newer version, or a resolution
at *v* or later): re-reading the same bad document (overlap windows, restarts, reconcile
passes, a second reindex) changes nothing and is counted as ``already_dead_lettered``, not as
a new dead letter. The record is resolved when the same document is indexed at *v* or later
(``resolved_by: "indexed"``), deleted from MongoDB by a tombstone at *v* or later, or
hard-deleted (``"deleted"``; a hard delete has no version: ``resolved_version`` null). A
refusal of a newer version reopens it. A record without a usable version (``version`` null)
is resolved by any later indexing or delete.

Where. :func:`record` ends every bulk (``_apply.write``: reindex, sync, reconcile, so
``verify --repair``): one ``_id $in`` read of the records of the bulk's documents, then only
when there is something to do one write of the new refusals and one of the resolutions (of
the documents the bulk indexed or deleted, or found at that version or newer: a 409, which
is how the replay of a batch whose resolution a crash lost settles it).
:func:`sweep` (each reconcile pass, the end of a reindex) resolves what no bulk sees:
invalid documents hard-deleted from MongoDB (never in the index: nothing to reconcile), a
resolution lost to a crash between a bulk's acknowledgement and its record, and records
written before this lifecycle existed (keyed by a hash of source, id, version and reason,
without ``collection``; they are listed and counted with every collection's).

Retention. Open records stay until resolved, whatever their age; a resolved record is kept
``dead_letter_days`` after its resolution (the audit trail: what was refused, why, and what
settled it), then ``_letters_admin.purge_resolved`` deletes it (each reconcile pass and reindex, and
``opendisco dead-letters --purge``). A refusal that finds its record purged between its read
and its write writes it anew (:func:`_save`), so a purge never loses a refusal.

Races. Every write is conditional on the record's state, so two writers (sync workers during
a lease handover, a reindex and sync) cannot reopen a resolved record with an older refusal
or resolve a newer one. One case has no record to condition on: a stale refusal written just
after another writer indexed a newer version and found nothing to resolve. The refusing
writer closes it: it reads the versions its own target holds for its new refusals (realtime
``mget``, only when it recorded any) and resolves those already indexed at their version.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import bson
from bson import Binary
from pymongo import InsertOne, UpdateOne
from pymongo.errors import BulkWriteError

from opendisco._backend import backend_errors
from opendisco._store import MAX_WRITES_PER_COMMAND, now_ms

from ._bulk import Action
from ._letter_copy import bounded_copy, storable
from ._schema import indexable_id, source_version

__all__ = [
    "DEAD_LETTERS",
    "Recorded",
    "dead_letter",
    "letter_key",
    "open_versions",
    "record",
    "sweep",
]

DEAD_LETTERS = "dead_letters"
RESOLVED = ("resolved_at", "resolved_by", "resolved_version", "resolved_source")
PAGE = 1000

#: ``ids -> {id: version}`` of the documents a bulk's target holds (``BulkWriter.versions``)
Versions = Callable[[list[str]], Awaitable[dict[str, int]]]


def _typed(doc_id: Any) -> str:
    return f"{type(doc_id).__name__}:{doc_id!r}"


def letter_key(collection: str, doc_id: Any) -> str:
    """The ``_id`` of a document's record: its collection and its id with the id's type."""
    return hashlib.sha256(f"{collection}\x00{_typed(doc_id)}".encode()).hexdigest()[:32]


def dead_letter(
    source: str,
    stage: str,
    doc: Mapping[str, Any],
    reason: str,
    version: Any = None,
    *,
    collection: str,
) -> dict[str, Any]:
    """A refusal of ``doc`` (read from ``collection``) at its version, as a record."""
    doc_id = doc.get("_id") if isinstance(doc, Mapping) else None
    if version is None and isinstance(doc, Mapping):
        version = doc.get("version")
    shown = storable(doc_id)
    exact = {} if _typed(shown) == _typed(doc_id) else {"doc_key": _encoded_id(doc_id)}
    return {
        "_id": letter_key(collection, doc_id),
        "collection": collection,
        "source": source,
        "stage": stage,
        "doc_id": shown,
        **exact,
        "version": source_version(version),  # what validation reads (2.0 is 2), else null
        "reason": reason[:2000],
        "doc": bounded_copy(doc),
        "at": now_ms(),
    }


def _encoded_id(doc_id: Any) -> Binary:
    """The id itself as BSON bytes, for a record whose ``doc_id`` had to be made storable
    (an out-of-range date, NaN): the sweep looks the document up by it."""
    return Binary(bson.encode({"_id": doc_id}))


def _source_id(rec: Mapping[str, Any], codec_options: Any) -> Any:
    """The id of the document a record refused, as the items collection reads it."""
    key = rec.get("doc_key")
    if isinstance(key, bytes):
        return bson.decode(key, codec_options=codec_options)["_id"]
    return rec.get("doc_id")


@dataclass
class Recorded:
    """What :func:`record` did: refusals written (new or changed), refusals its record already
    knew (the same one again, or older than what it holds), records resolved."""

    written: int = 0
    known: int = 0
    resolved: int = 0


def _fate(letter: Mapping[str, Any], rec: Mapping[str, Any] | None) -> str:
    """``new`` (no record), ``update`` (the record moves to this refusal) or ``known``."""
    if rec is None:
        return "new"
    version, held = letter["version"], rec.get("version")
    if rec.get("resolved_at") is None:
        if (held, rec.get("stage"), rec.get("reason")) == (
            version,
            letter["stage"],
            letter["reason"],
        ):
            return "known"
        newer_open = version is not None and held is not None and held > version
        return "known" if newer_open else "update"
    resolved = rec.get("resolved_version")
    if version is not None and resolved is not None and resolved >= version:
        return "known"  # resolved at this version or later: a stale re-read
    return "update"


def _overwritable(key: str, version: int | None) -> dict[str, Any]:
    """The records a refusal at ``version`` may overwrite (mirrors :func:`_fate`)."""
    if version is None:
        return {"_id": key}
    return {
        "_id": key,
        "$or": [
            {"resolved_at": None, "version": {"$lte": version}},
            {"resolved_at": None, "version": None},
            {"resolved_at": {"$ne": None}, "resolved_version": {"$lt": version}},
            {"resolved_at": {"$ne": None}, "resolved_version": None},
        ],
    }


def _update(letter: Mapping[str, Any]) -> UpdateOne:
    body = {k: v for k, v in letter.items() if k != "_id"}
    change = {"$set": body, "$unset": dict.fromkeys(RESOLVED, "")}
    return UpdateOne(_overwritable(letter["_id"], letter["version"]), change)


def _slim(letter: Mapping[str, Any]) -> dict[str, Any]:
    """A document the server cannot store back (e.g. too deep): keep id and reason at least."""
    return {**letter, "doc": {"_id": letter["doc_id"], "unstorable": True}}


def _resolve(key: str, by: str, version: int | None, source: str) -> UpdateOne:
    """Resolve ``key``'s open record if it is of ``version`` or older (``None``: any)."""
    query: dict[str, Any] = {"_id": key, "resolved_at": None}
    if version is not None:
        query["$or"] = [{"version": {"$lte": version}}, {"version": None}]
    fields = {"resolved_by": by, "resolved_version": version, "resolved_source": source}
    return UpdateOne(query, {"$set": {"resolved_at": now_ms(), **fields}})


async def _write(db: Any, ops: list[Any]) -> tuple[int, list[tuple[int, dict[str, Any]]]]:
    """Unordered writes in commands FerretDB accepts: how many records they changed, and
    their errors as ``(op index, error)``."""
    changed, errors = 0, []
    with backend_errors("writing dead letters failed"):
        for start in range(0, len(ops), MAX_WRITES_PER_COMMAND):
            try:
                result = await db[DEAD_LETTERS].bulk_write(
                    ops[start : start + MAX_WRITES_PER_COMMAND], ordered=False
                )
                changed += result.inserted_count + result.modified_count
            except BulkWriteError as exc:
                changed += exc.details.get("nInserted", 0) + exc.details.get("nModified", 0)
                errors += [(start + e["index"], e) for e in exc.details.get("writeErrors", [])]
    return changed, errors


async def _records(db: Any, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
    keys = list(keys)
    fields = {"version": 1, "stage": 1, "reason": 1, "resolved_at": 1, "resolved_version": 1}
    out: dict[str, dict[str, Any]] = {}
    with backend_errors("reading dead letters failed"):
        for start in range(0, len(keys), PAGE):
            query = {"_id": {"$in": keys[start : start + PAGE]}}
            async for rec in db[DEAD_LETTERS].find(query, fields):
                out[rec["_id"]] = rec
    return out


async def _save(
    db: Any, new: list[dict[str, Any]], changed: list[dict[str, Any]], attempts: int = 3
) -> None:
    """Insert the ``new`` refusals, update the records of the ``changed`` ones. An update
    that matched nothing either met a record that knows better (written meanwhile: left) or
    none at all (purged since it was read): those are inserted again, ``attempts`` rounds."""
    inserts = [{**letter, "first_at": letter["at"]} for letter in new]
    for i, error in (await _write(db, [InsertOne(doc) for doc in inserts]))[1]:
        if error.get("code") == 11000:  # recorded by another writer meanwhile
            changed.append(new[i])
        else:
            await _write(db, [InsertOne(_slim(inserts[i]))])
    done, errors = await _write(db, [_update(letter) for letter in changed])
    for i, _ in errors:
        await _write(db, [_update(_slim(changed[i]))])
    if done + len(errors) < len(changed) and attempts > 1:
        held = await _records(db, (letter["_id"] for letter in changed))
        if gone := [letter for letter in changed if letter["_id"] not in held]:
            await _save(db, gone, [], attempts - 1)


def _settlements(settled: Iterable[Action], collection: str) -> dict[str, tuple[str, int | None]]:
    """``key -> (resolved_by, version)`` of acknowledged actions that settle their document."""
    out: dict[str, tuple[str, int | None]] = {}
    for action in settled:
        if not action.settles:
            continue
        by = "indexed" if action.op == "index" else "deleted"
        version = None if action.settles == "any" else action.version
        key = letter_key(collection, action.id)
        known = out.get(key)
        if known is None or (known[1] is not None and (version is None or version > known[1])):
            out[key] = (by, version)
    return out


async def record(
    db: Any,
    letters: list[dict[str, Any]],
    settled: Iterable[Action] = (),
    *,
    collection: str,
    source: str,
    versions: Versions | None = None,
) -> Recorded:
    """The dead-letter side of one bulk: ``letters`` refused, ``settled`` acknowledged.

    ``versions`` reads what the bulk's target holds (see the module's *Races*)."""
    settles = _settlements(settled, collection)
    keys = {letter["_id"] for letter in letters} | settles.keys()
    if not keys:
        return Recorded()
    records = await _records(db, keys)
    fates = [(letter, _fate(letter, records.get(letter["_id"]))) for letter in letters]
    new = [letter for letter, fate in fates if fate == "new"]
    changed = [letter for letter, fate in fates if fate == "update"]
    written = new + changed
    await _save(db, new, changed)
    opened = {k for k, rec in records.items() if rec.get("resolved_at") is None}
    opened |= {letter["_id"] for letter in written}
    ops = [_resolve(k, by, v, source) for k, (by, v) in settles.items() if k in opened]
    check = [x for x in written if x["version"] is not None and indexable_id(x["doc_id"])]
    if versions is not None and check:
        held = await versions([x["doc_id"] for x in check])
        ops += [
            _resolve(x["_id"], "indexed", held[x["doc_id"]], source)
            for x in check
            if held.get(x["doc_id"], 0) >= x["version"] and x["_id"] not in settles
        ]
    resolved, _ = await _write(db, ops)
    return Recorded(written=len(written), known=len(letters) - len(written), resolved=resolved)


def records_of(collection: str) -> dict[str, Any]:
    """This collection's records and those written before records named their collection."""
    return {"collection": {"$in": [collection, None]}}


async def open_versions(db: Any, collection: str, ids: list[str]) -> dict[str, int | None]:
    """``id -> version`` of the open records of ``ids`` (one ``_id $in`` read)."""
    keys = {letter_key(collection, i): i for i in ids}
    records = await _records(db, keys)
    return {keys[k]: r.get("version") for k, r in records.items() if r.get("resolved_at") is None}


async def sweep(
    db: Any,
    items: Any,
    versions: Versions,
    *,
    source: str,
    owns: Callable[[Any], bool] = lambda _: True,
) -> int:
    """Resolve the open records (of ``items``' collection, and older ones) whose document is
    gone from ``items``, tombstoned at their version or later, or held by ``versions``' index
    at their version or later. Scans ``dead_letters`` once (small: the refusals); reads the
    documents and the index by id, a page at a time. Returns the records resolved."""
    opened = []
    # the ids read back as ``items`` reads them: a datetime ``_id`` decoded by the database's
    # codec carries another ``tzinfo``, hence another ``repr`` (``_typed``, ``owns``), and
    # the document it names was taken for one deleted
    letters = db.get_collection(DEAD_LETTERS, codec_options=items.codec_options)
    with backend_errors("reading dead letters failed"):
        query = {**records_of(items.name), "resolved_at": None}
        async for rec in letters.find(query, {"doc_id": 1, "doc_key": 1, "version": 1}):
            rec["doc_id"] = _source_id(rec, items.codec_options)
            if owns(rec["doc_id"]):
                opened.append(rec)
    resolved = 0
    for start in range(0, len(opened), PAGE):
        ops = await _sweep_page(items, versions, opened[start : start + PAGE], source)
        resolved += (await _write(db, ops))[0]
    return resolved


async def _sweep_page(
    items: Any, versions: Versions, page: list[dict[str, Any]], source: str
) -> list[UpdateOne]:
    ids = [rec.get("doc_id") for rec in page]
    current: dict[str, dict[str, Any]] = {}
    with backend_errors("reading items failed"):
        async for doc in items.find({"_id": {"$in": ids}}, {"version": 1, "deleted": 1}):
            current[_typed(doc["_id"])] = doc
    held = await versions([i for i in ids if indexable_id(i)])
    ops = []
    for rec in page:
        doc, wanted = current.get(_typed(rec.get("doc_id"))), rec.get("version")
        if doc is None:
            ops.append(_resolve(rec["_id"], "deleted", None, source))
            continue
        now = source_version(doc.get("version"))
        if now is None or (wanted is not None and now < wanted):
            continue  # no usable version yet, or older than the refusal (not settled)
        if doc.get("deleted") is True:
            ops.append(_resolve(rec["_id"], "deleted", now, source))
        elif indexable_id(rec.get("doc_id")) and held.get(rec["doc_id"], 0) >= now:
            ops.append(_resolve(rec["_id"], "indexed", now, source))
    return ops
