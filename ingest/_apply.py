"""MongoDB documents → validated, embedded, external-versioned bulk actions (reindex and sync).

``prepare`` is synchronous (it runs the encoder; call it in a thread); ``write`` sends the
actions and turns OpenSearch rejections into dead letters. A document whose newest version
is invalid or rejected is also deleted at that version, so the index never keeps serving a
stale copy of it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from opendisco._exceptions import DocumentInvalid
from opendisco._settings import Settings

from ._bulk import Action, BulkResult, BulkWriter
from ._document import embedding_text, to_index_doc
from ._embed import Embedder
from ._letters import dead_letter, record
from ._schema import indexable_id, is_tombstone, source_version, validate_item

__all__ = ["Applied", "Counters", "Prepared", "prepare", "write"]


@dataclass
class Prepared:
    actions: list[Action] = field(default_factory=list)
    letters: list[dict[str, Any]] = field(default_factory=list)
    # settled with nothing to write: hard deletes of documents the index does not hold,
    # tombstones of ids it cannot hold
    settled: list[Action] = field(default_factory=list)
    encoded: int = 0
    cache_hits: int = 0


@dataclass
class Counters:
    """What an apply, a sync pass or a reindex did to the index: the one counters type.

    ``seen`` changes read, ``indexed``/``deleted`` writes acknowledged (a delete of a document
    the index did not hold is not counted), ``conflicts`` writes answered 409 (a newer copy is
    already there), ``dead_lettered`` refusals recorded in ``dead_letters`` (new, or a new
    version or reason), ``already_dead_lettered`` refusals their open record already held
    (read again: not a new failure), ``dead_letters_resolved`` open records resolved (the
    document is now indexed or deleted), ``dead_letters_purged`` resolved records deleted
    after their retention (``dead_letter_days``), ``encoded``/``cache_hits`` texts through
    the model / from a cache, ``retries`` bulk items sent again after a 429/5xx. Reports
    (``SyncReport``, ``ReindexReport``) extend it with what is particular to them.
    """

    seen: int = 0
    indexed: int = 0
    deleted: int = 0
    conflicts: int = 0
    dead_lettered: int = 0
    already_dead_lettered: int = 0
    dead_letters_resolved: int = 0
    dead_letters_purged: int = 0
    encoded: int = 0
    cache_hits: int = 0
    retries: int = 0

    def add(self, other: Counters) -> None:
        """Add ``other``'s counters to these (only the counters, not a report's own fields)."""
        for f in fields(Counters):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


class Applied:
    """Bounded memory of ``id → newest version`` already applied by this process: re-reads
    of the same version (polling overlap windows, a reindex's catch-up) skip them.

    A read *older* than the memory is not skipped, and the memory forgets the newer version:
    MongoDB's versions went back (restored from a backup, a document deleted and created
    again at version 1), and the later writes of that older line — version 2, 3, … up to the
    remembered one — are changes to apply, not re-reads (the engine answers a 409 while it
    holds the newer copy: no older write lands over it).
    """

    def __init__(self, max_items: int = 100_000) -> None:
        self.max_items = max_items
        self._versions: OrderedDict[Any, Any] = OrderedDict()

    def fresh(self, docs: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
        """The documents not yet applied at their version (or newer)."""
        out = []
        for doc in docs:
            key = _key(doc)
            if key is None or key not in self._versions:
                out.append(doc)
                continue
            known, version = self._versions[key], _marker(doc)
            if isinstance(version, int) and isinstance(known, int):
                if known == version:
                    continue
                if known > version:  # went back: remember this line's versions from now
                    del self._versions[key]
            elif known == version:  # no usable version: the same invalid value again
                continue
            out.append(doc)
        return out

    def remember(self, docs: Iterable[Mapping[str, Any]]) -> None:
        for doc in docs:
            key = _key(doc)
            if key is None:
                continue
            version, known = _marker(doc), self._versions.get(key)
            if isinstance(version, int) and isinstance(known, int):
                version = max(version, known)
            self._versions[key] = version
            self._versions.move_to_end(key)
        while len(self._versions) > self.max_items:
            self._versions.popitem(last=False)

    def forget(self, keys: Iterable[str]) -> None:
        """Drop the memory of these ids (their indexed copy was removed: apply them again)."""
        for key in keys:
            self._versions.pop(key, None)

    def clear(self) -> None:
        self._versions.clear()

    def __len__(self) -> int:
        return len(self._versions)


def _marker(doc: Mapping[str, Any]) -> Any:
    version = doc.get("version")
    if isinstance(version, int) and not isinstance(version, bool):
        return version
    return repr(version)


def _key(doc: Mapping[str, Any]) -> Any:
    """A hashable id that keeps its BSON type (``424242`` and ``"424242"`` differ).

    Any id but a string is keyed by its type and ``repr`` (a tuple, which no BSON ``_id``
    decodes to): Python takes ``True`` for ``1`` (and ``False`` for ``0``), so a document
    ``_id: true`` read after ``_id: 1`` was skipped as applied and never dead-lettered; a
    null or embedded-document id is unhashable, and forgetting it would re-apply it on every
    pass (a sync worker re-reading it every pass, a future or non-date ``updated_at``, never
    idles).
    """
    if not isinstance(doc, Mapping) or "_id" not in doc:
        return None
    value = doc["_id"]
    return value if type(value) is str else (type(value).__name__, repr(value))


def _version_of(doc: Mapping[str, Any]) -> int | None:
    return source_version(doc.get("version")) if isinstance(doc, Mapping) else None


def prepare(
    docs: Iterable[Mapping[str, Any]],
    embedder: Embedder,
    settings: Settings,
    *,
    source: str,
    delete_invalid: bool,
) -> Prepared:
    out = Prepared()
    valid: list[tuple[dict[str, Any], Mapping[str, Any]]] = []
    for raw in docs:
        try:
            item = validate_item(raw, behaviour_dim=settings.behaviour_dim)
        except DocumentInvalid as exc:
            version = _version_of(raw)
            doc_id = raw.get("_id") if isinstance(raw, Mapping) else None
            if is_tombstone(raw):
                # an id OpenSearch cannot hold was never indexed: nothing to delete there
                tombstone = Action("delete", doc_id, version, raw=raw)
                (out.actions if indexable_id(doc_id) else out.settled).append(tombstone)
                continue
            out.letters.append(
                dead_letter(
                    source, "validation", raw, str(exc), collection=settings.items_collection
                )
            )
            if delete_invalid and version is not None and indexable_id(doc_id):
                out.actions.append(Action("delete", doc_id, version, raw=raw, settles=""))
            continue
        if item["deleted"]:
            out.actions.append(Action("delete", item["_id"], item["version"], raw=raw))
        else:
            valid.append((item, raw))
    if valid:
        vectors, out.encoded, out.cache_hits = embedder.encode_counted(
            [embedding_text(item) for item, _ in valid]
        )
        vectors = np.round(vectors, 6)  # float32; written as 6-decimal text by orjson
        for (item, raw), vec in zip(valid, vectors, strict=True):
            doc = to_index_doc(item, vec)
            out.actions.append(Action("index", item["_id"], item["version"], doc, raw=raw))
    out.actions = [action.with_data() for action in out.actions]
    return out


async def write(
    prepared: Prepared, writer: BulkWriter, db: Any, *, source: str, seen: int
) -> Counters:
    """Send ``prepared``'s actions, dead-letter what OpenSearch refused (and remove its stale
    copy), then record the outcome in ``dead_letters`` (``_letters.record``: new refusals,
    and the resolution of the records of documents now indexed or deleted). A 409 settles
    too: the index already holds that version or a newer one, which is what a replay of a
    bulk whose resolution was lost (a crash after the acknowledgement) answers."""
    result: BulkResult = await writer.write(prepared.actions)
    collection = writer.settings.items_collection
    letters = list(prepared.letters)
    followups: list[Action] = []
    for action, reason in result.rejected:
        letters.append(
            dead_letter(
                source,
                "opensearch",
                action.raw or {},
                reason,
                action.version,
                collection=collection,
            )
        )
        if action.op == "index":
            followups.append(
                Action("delete", action.id, action.version, raw=action.raw, settles="")
            )
    if followups:
        result.merge(await writer.write(followups))
    recorded = await record(
        db,
        letters,
        # a 409 too: the index holds this version or a newer one (not for a hard delete:
        # its version is the index's, so a 409 says the document came back)
        result.ok + [a for a in result.conflicts if a.settles == "version"] + prepared.settled,
        collection=collection,
        source=source,
        versions=writer.versions,
    )
    stats = Counters(
        seen=seen,
        conflicts=len(result.conflicts),
        dead_lettered=recorded.written,
        already_dead_lettered=recorded.known,
        dead_letters_resolved=recorded.resolved,
        encoded=prepared.encoded,
        cache_hits=prepared.cache_hits,
        retries=result.retries,
    )
    absent = {id(action) for action in result.absent}
    for action in result.ok:
        if action.op == "index":
            stats.indexed += 1
        elif action not in followups and id(action) not in absent:
            stats.deleted += 1
    return stats
