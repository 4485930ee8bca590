"""MongoDB documents → validated, embedded, external-versioned bulk actions (reindex and sync).

``prepare`` is synchronous (it runs the encoder; call it in a thread); ``write`` sends the
actions and turns OpenSearch rejections into dead letters. A document whose newest version
is invalid or rejected is also deleted at that version, so the index never keeps serving a
stale copy of it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from opendisco._exceptions import DocumentInvalid
from opendisco._settings import Settings

from ._bulk import Action, BulkResult, BulkWriter
from ._document import embedding_text, to_index_doc
from ._embed import Embedder
from ._schema import validate_item
from ._store import dead_letter, write_dead_letters

__all__ = ["ApplyStats", "Prepared", "prepare", "write"]


@dataclass
class Prepared:
    actions: list[Action] = field(default_factory=list)
    letters: list[dict[str, Any]] = field(default_factory=list)
    encoded: int = 0
    cache_hits: int = 0


@dataclass
class ApplyStats:
    seen: int = 0
    indexed: int = 0
    deleted: int = 0
    conflicts: int = 0
    dead_lettered: int = 0
    encoded: int = 0
    cache_hits: int = 0
    retries: int = 0
    indexed_ids: set[str] = field(default_factory=set, repr=False)
    dead_ids: set[str] = field(default_factory=set, repr=False)

    def add(self, other: ApplyStats) -> None:
        for name in (
            "seen",
            "indexed",
            "deleted",
            "conflicts",
            "dead_lettered",
            "encoded",
            "cache_hits",
            "retries",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.indexed_ids |= other.indexed_ids
        self.dead_ids |= other.dead_ids


def _version_of(doc: Mapping[str, Any]) -> int | None:
    v = doc.get("version") if isinstance(doc, Mapping) else None
    if isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 2**62:
        return v
    return None


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
            out.letters.append(dead_letter(source, "validation", raw, str(exc)))
            version = _version_of(raw)
            doc_id = raw.get("_id") if isinstance(raw, Mapping) else None
            if (
                delete_invalid
                and version is not None
                and isinstance(doc_id, str)
                and len(doc_id.encode()) <= 512
            ):
                out.actions.append(Action("delete", doc_id, version, raw=raw))
            continue
        if item["deleted"]:
            out.actions.append(Action("delete", item["_id"], item["version"], raw=raw))
        else:
            valid.append((item, raw))
    if valid:
        before_enc, before_hits = embedder.encoded, embedder.hits
        vectors = embedder.encode([embedding_text(item) for item, _ in valid])
        out.encoded = embedder.encoded - before_enc
        out.cache_hits = embedder.hits - before_hits
        rounded = np.round(vectors.astype(np.float64), 6).tolist()
        for (item, raw), vec in zip(valid, rounded, strict=True):
            out.actions.append(
                Action("index", item["_id"], item["version"], to_index_doc(item, vec), raw=raw)
            )
    return out


async def write(
    prepared: Prepared, writer: BulkWriter, db: Any, *, source: str, seen: int
) -> ApplyStats:
    result: BulkResult = await writer.write(prepared.actions)
    letters = list(prepared.letters)
    followups: list[Action] = []
    for action, reason in result.rejected:
        letters.append(dead_letter(source, "opensearch", action.raw or {}, reason, action.version))
        if action.op == "index":
            followups.append(Action("delete", action.id, action.version, raw=action.raw))
    if followups:
        result.merge(await writer.write(followups))
    await write_dead_letters(db, letters)
    stats = ApplyStats(
        seen=seen,
        conflicts=len(result.conflicts),
        dead_lettered=len(letters),
        encoded=prepared.encoded,
        cache_hits=prepared.cache_hits,
        retries=result.retries,
        dead_ids={str(letter["doc_id"]) for letter in letters},
    )
    for action in result.ok:
        if action.op == "index":
            stats.indexed += 1
            stats.indexed_ids.add(action.id)
        elif action not in followups:
            stats.deleted += 1
    return stats
