"""A trained model's table, served whole: its collections, the pointer, publishing a new one.

What a trainer writes for serving (ALS behaviour vectors, EASE item–item rows) means something
only beside the rest of the same model, so a model is never written into the collection
readers read. A publish writes every document of the new model into a collection of its own,
``<base>__<version>``, then switches the pointer document (``<base>_model``: ``{_id:
"current", collection, previous, version, retired, ...}``) to it with one single-document
write. Every reader (:meth:`Generations.served`) follows the pointer; with none (a database
from before), the unversioned ``<base>`` collection is served.

A run killed before the switch leaves the previous model served whole; its partial collection
is dropped by the next publish. Publishes are one at a time (a lease in ``<base>_locks``,
renewed while held, taken over at once from a killed holder): a second trainer waits, then
publishes its own model whole in turn. A model's collection stays after it stopped being
served, for :data:`KEEP_S` (the pointer lists it under ``retired`` with the time): a reader
that resolved the pointer before the switch still reads it (:class:`Followed` reads the
pointer at most every 30 s); the first publish after that drops it. Before, the next publish
dropped the model before the previous one at once, so two publishes within a reader's 30 s
(a second trainer waiting on the first's lease) left that reader an empty collection: no
rows, silently, until its next pointer read. A publish whose lease lapsed (paused longer than
``lease_s``) finds its collection dropped or the pointer moved by the publish that took over,
and switches to nothing (:class:`StoreBackendError`; the model served stays).

Use::

    gens = Generations(db, "item_similarity")
    async with gens.publishing(lease_s=..., wait_s=..., what="...") :
        draft = await gens.begin(version)
        ...  # write the model into draft.coll
        await gens.commit(draft, documents=n, version=version, ...)
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pymongo.errors import DuplicateKeyError

from ._backend import backend_errors
from ._exceptions import StoreBackendError
from ._settings import Settings
from ._store import age_s, lease

__all__ = ["CURRENT", "Draft", "Followed", "Generations", "behaviour_models"]

#: the pointer document's ``_id``
CURRENT = "current"
#: the one lease a publish holds
PUBLISH_LOCK = "publish"
#: how long a model stays readable after it stopped being served: readers follow the pointer
#: at most every 30 s (``Followed``: the item-item rows, the behaviour model), and a read
#: under way then finishes after it
KEEP_S = 120.0


@dataclass(frozen=True)
class Draft:
    """A model being written: its own collection, and the pointer it replaces."""

    coll: Any
    version: str
    current: Mapping[str, Any]


@dataclass(frozen=True)
class Generations:
    """The collections of the models of the served table ``base`` (see the module doc)."""

    db: Any
    base: str
    #: how the model collections are read (e.g. the items' UTC dates); the db's by default
    codec_options: Any = None
    #: how long a model no longer served stays readable (:data:`KEEP_S`)
    keep_s: float = KEEP_S

    @property
    def pointer(self) -> Any:
        return self.db[f"{self.base}_model"]

    @property
    def locks(self) -> Any:
        return self.db[f"{self.base}_locks"]

    def named(self, name: str) -> Any:
        return self.db.get_collection(name, codec_options=self.codec_options)

    async def current(self) -> dict[str, Any]:
        """The pointer document, else ``{collection: base}`` (no model published yet)."""
        with backend_errors(f"reading {self.pointer.name} failed"):
            doc = await self.pointer.find_one({"_id": CURRENT})
        return doc or {"collection": self.base}

    async def served(self) -> Any:
        """The collection of the model served now (the pointer's, else ``base``)."""
        return self.named((await self.current())["collection"])

    async def drop_all_but(self, keep: set[str]) -> list[str]:
        """Drop every model collection (``base`` and ``base__*``) not in ``keep``."""
        with backend_errors(f"listing {self.base} models failed"):
            names = await self.db.list_collection_names()
        gone = [
            n for n in names if (n == self.base or n.startswith(f"{self.base}__")) and n not in keep
        ]
        for name in gone:
            with backend_errors(f"dropping {name} failed"):
                await self.db.drop_collection(name)
        return gone

    async def drop(self) -> None:
        """Drop every model and the pointer (nothing served: readers read an empty ``base``)."""
        await self.drop_all_but(set())
        with backend_errors(f"dropping {self.pointer.name} failed"):
            await self.pointer.drop()

    @asynccontextmanager
    async def publishing(self, *, lease_s: float, wait_s: float, what: str) -> AsyncIterator[None]:
        """Hold the one publish lease of ``base`` (renewed while held)."""
        async with lease(self.locks, [PUBLISH_LOCK], lease_s=lease_s, wait_s=wait_s, what=what):
            yield

    async def begin(self, version: str) -> Draft:
        """Under :meth:`publishing`: drop what a killed publish left (no other publish is
        writing) and name the new model's collection."""
        current = await self.current()
        kept = [r["collection"] for r in self._retired(current, datetime.now(UTC))]
        await self.drop_all_but({current["collection"], current.get("previous", ""), *kept})
        return Draft(self.named(f"{self.base}__{version}"), version, current)

    def _retired(self, pointer: Mapping[str, Any], now: datetime) -> list[dict[str, Any]]:
        """The models of ``pointer``'s ``retired`` list that stopped being served less than
        ``keep_s`` before ``now`` (``{collection, at}``; a pointer written before has none)."""
        out = []
        for r in pointer.get("retired") or ():
            at = r.get("at") if isinstance(r, Mapping) else None
            # dated ahead (another host's clock): kept, a reader may follow it
            if (
                isinstance(at, datetime)
                and isinstance(r.get("collection"), str)
                and age_s(at, now, ahead_s=math.inf) < self.keep_s
            ):
                at = at if at.tzinfo else at.replace(tzinfo=UTC)
                out.append({"collection": r["collection"], "at": at})
        return out

    async def write(
        self,
        draft: Draft,
        docs: Sequence[Mapping[str, Any]],
        *,
        chunk: int,
        progress: Callable[[int], None] | None = None,
    ) -> int:
        """Insert ``docs`` into ``draft``'s collection, ``chunk`` a command (a new collection:
        inserts, FerretDB upserts one by one ~15x slower); ``progress`` is given each chunk's
        count. Returns the number inserted."""
        written = 0
        with backend_errors(f"writing {draft.coll.name} failed"):
            for k in range(0, len(docs), chunk):
                part = docs[k : k + chunk]
                written += len((await draft.coll.insert_many(part, ordered=False)).inserted_ids)
                if progress is not None:
                    progress(len(part))
        return written

    async def commit(self, draft: Draft, *, documents: int, **fields: Any) -> str:
        """Point the readers at ``draft``'s collection (the pointer document gets ``fields``)
        if all its ``documents`` are there and the pointer still names the one ``draft``
        replaces; then drop the models that stopped being served ``keep_s`` ago or more (the
        one replaced now stays, listed as retired). Returns the collection served."""
        now = datetime.now(UTC)
        replaced = draft.current["collection"]
        retired = [
            *(r for r in self._retired(draft.current, now) if r["collection"] != replaced),
            {"collection": replaced, "at": now},
        ]
        doc = {
            "collection": draft.coll.name,
            "previous": replaced,
            "version": draft.version,
            "retired": retired,
            **fields,
        }
        await self._switch(draft, doc, documents)
        await self.drop_all_but({draft.coll.name, *(r["collection"] for r in retired)})
        return str(draft.coll.name)

    async def _switch(self, draft: Draft, doc: Mapping[str, Any], documents: int) -> None:
        with backend_errors(f"counting {draft.coll.name} failed"):
            have = await draft.coll.count_documents({})
        if have != documents:
            raise StoreBackendError(
                f"{draft.coll.name}: {have} of its {documents} documents are there (its publish "
                "lost its lease, and another dropped it); the served model did not change"
            )
        current, pointer = draft.current, self.pointer
        with backend_errors(f"switching {pointer.name} failed"):
            if "_id" in current:  # the pointer read: replaced only if it still names that
                res = await pointer.replace_one(
                    {"_id": CURRENT, "version": current["version"]}, doc
                )
                switched = res.matched_count == 1
            else:  # none yet (the unversioned collection served): the first pointer
                try:
                    await pointer.insert_one({"_id": CURRENT, **doc})
                    switched = True
                except DuplicateKeyError:
                    switched = False
        if not switched:
            raise StoreBackendError(
                f"{pointer.name}: another publish switched the model while {draft.version} "
                "was written (its lease lapsed); that one stays served"
            )


class Followed:
    """The served model of ``models`` as a serving process follows it: the pointer read at
    most every ``every_s`` (no round trip per request; a new model is seen within
    ``every_s``)."""

    def __init__(self, models: Generations, every_s: float) -> None:
        self.models = models
        self.every_s = every_s
        self._read: tuple[float, dict[str, Any]] | None = None

    async def current(self) -> dict[str, Any]:
        """The pointer document (:meth:`Generations.current`), read again once it is older
        than ``every_s``."""
        now = time.monotonic()
        if self._read is None or now - self._read[0] >= self.every_s:
            self._read = (now, await self.models.current())
        return self._read[1]

    async def version(self) -> str | None:
        """The served model's version (None: no model published, the unversioned table)."""
        return (await self.current()).get("version")

    async def served(self) -> Any:
        """The collection of the model served now."""
        return self.models.named((await self.current())["collection"])

    def forget(self) -> None:
        """Read the pointer again at the next call."""
        self._read = None


def behaviour_models(db: Any, settings: Settings, codec_options: Any = None) -> Generations:
    """The trained behaviour vectors' models (``settings.behaviour_collection``), written by
    ``opendisco train``; the members' folded vectors name the one they came from."""
    return Generations(db, settings.behaviour_collection, codec_options=codec_options)
