"""Learnt item–item similarity (``item_similarity``): a trained table serving reads per request.

The co-engagement graph (:class:`~opendisco.signals.ItemGraph`) counts raw co-occurrences as
events arrive; this table holds a *model's* item-to-item weights, fitted offline on one period
of positives (EASE, :func:`opendisco.rerank.ease_neighbours`) and replaced as a whole by the
trainer: ``{_id: src, n: "<JSON {dst: w}>", k, version}``, the same
one-string-per-row layout as the graph (FerretDB converts every field of a document on each
read; a string costs its bytes), read with one ``find`` by ``_id`` for a member's recent
items. A candidate's similarity feature is the summed weight from the member's recent
positives (EASE's score over that history, truncated to each item's stored neighbours).

Each model's rows are a collection of their own, published whole
(:class:`opendisco._published.Generations`: ``item_similarity__<version>``, the pointer
``item_similarity_model``; with no pointer, a database from before, the unversioned
``item_similarity`` is read): a trainer killed midway leaves the previous model's rows served,
never rows of two models (each item's row of another fit) side by side.

Nothing here learns from live events: the table changes only when a trainer replaces it, so a
reader may cache rows for minutes, as long as it drops them when the served model changes (the
feature store: :meth:`ItemSimilarity.served` names the model, the pointer read at most every
``pointer_s``; a replaced model stays readable ``opendisco._published.KEEP_S`` after).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from typing import Any

from opendisco._backend import backend_errors
from opendisco._published import Followed, Generations
from opendisco._store import MAX_WRITES_PER_COMMAND

from ._graph import READ_CHUNK, decode_row, encode_row

__all__ = ["ITEM_SIMILARITY", "ItemSimilarity"]

ITEM_SIMILARITY = "item_similarity"


class ItemSimilarity:
    """Rows of a trained item–item model (see the module doc)."""

    def __init__(
        self, db: Any, *, lease_s: float = 30.0, wait_s: float = 900.0, pointer_s: float = 0.0
    ) -> None:
        self.models = Generations(db, ITEM_SIMILARITY)
        self.lease_s = lease_s
        self.wait_s = wait_s
        #: the served model, its pointer read at most every ``pointer_s``
        self.followed = Followed(self.models, pointer_s)

    async def served(self) -> Any:
        """The collection of the rows served now (read from the pointer at most every
        ``pointer_s``)."""
        return await self.followed.served()

    def forget_served(self) -> None:
        """Read the pointer again at the next :meth:`served`."""
        self.followed.forget()

    async def clear(self) -> None:
        """Drop every model's rows (none served)."""
        await self.models.drop()

    async def replace(self, rows: Mapping[str, Mapping[str, float]], version: str) -> int:
        """Replace the whole table with ``rows`` (``{src: {dst: w}}``), tagged ``version``:
        the rows are written into a collection of their own, then served at once (see the
        module doc). Returns rows written.

        One replace at a time (a lease, renewed while held; a second trainer waits up to
        ``wait_s``, then replaces the whole table in turn). ``version`` names the model
        (`train similarity` stamps it to the second): each replace's collection gets a
        suffix of its own, so two runs in one second never write into one collection."""
        docs = [
            {"_id": str(src), "n": encode_row(row), "k": len(row), "version": version}
            for src, row in sorted(rows.items())
            if row
        ]
        held = self.models.publishing(
            lease_s=self.lease_s, wait_s=self.wait_s, what=ITEM_SIMILARITY
        )
        async with held:
            draft = await self.models.begin(f"{version}-{secrets.token_hex(3)}")
            await self.models.write(draft, docs, chunk=MAX_WRITES_PER_COMMAND)
            await self.models.commit(draft, documents=len(docs), rows=len(docs))
        return len(docs)

    async def rows(
        self, item_ids: Iterable[str], served: Any = None
    ) -> dict[str, dict[str, float]]:
        """``{item: {dst: w}}`` for the ``item_ids`` that have a row (``_id`` lookups in the
        ``served`` collection, by default the served model's)."""
        src = list(dict.fromkeys(str(i) for i in item_ids))
        out: dict[str, dict[str, float]] = {}
        if not src:
            return out
        coll = served if served is not None else await self.served()
        for k in range(0, len(src), READ_CHUNK):
            with backend_errors(f"{ITEM_SIMILARITY} lookup failed"):
                docs = await coll.find(
                    {"_id": {"$in": src[k : k + READ_CHUNK]}}, projection={"n": 1}
                ).to_list(None)
            out.update((d["_id"], decode_row(d.get("n"))) for d in docs)
        return out
