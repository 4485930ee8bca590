"""Learnt item–item similarity (``item_similarity``): a trained table serving reads per request.

The co-engagement graph (:class:`~opendisco.signals.ItemGraph`) counts raw co-occurrences as
events arrive; this table holds a *model's* item-to-item weights, fitted offline on one period
of positives (EASE, :func:`opendisco.rerank.ease_neighbours`) and replaced as a whole by the
trainer: ``{_id: src, n: "<JSON {dst: w}>", k, version, w: the replace's mark}``, the same
one-string-per-row layout as the graph (FerretDB converts every field of a document on each
read; a string costs its bytes), read with one ``find`` by ``_id`` for a member's recent
items. A candidate's similarity feature is the summed weight from the member's recent
positives (EASE's score over that history, truncated to each item's stored neighbours).

Nothing here learns from live events: the table changes only when a trainer replaces it, so a
reader may cache rows for minutes.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from pymongo import DeleteMany, ReplaceOne

from opendisco._backend import backend_errors
from opendisco._store import bulk_write_chunked, lease

from ._graph import READ_CHUNK, decode_row, encode_row

__all__ = ["ITEM_SIMILARITY", "ItemSimilarity"]

ITEM_SIMILARITY = "item_similarity"
#: the one lease a replace holds (``_locks`` of the table)
REPLACE_LOCK = "replace"


class ItemSimilarity:
    """Rows of a trained item–item model (see the module doc)."""

    def __init__(self, db: Any, *, lease_s: float = 30.0, wait_s: float = 900.0) -> None:
        self.coll = db[ITEM_SIMILARITY]
        self.locks = db[f"{ITEM_SIMILARITY}_locks"]
        self.lease_s = lease_s
        self.wait_s = wait_s

    async def replace(self, rows: Mapping[str, Mapping[str, float]], version: str) -> int:
        """Replace the whole table with ``rows`` (``{src: {dst: w}}``), tagged ``version``:
        the new rows are upserted, then every row another replace wrote is deleted (a reader
        sees old or new rows of an item, never a half-written one). Returns rows written.

        One replace at a time (a lease, renewed while held; a second trainer waits up to
        ``wait_s``, then replaces the whole table in turn): two at once each deleted the
        other's rows ("every row of another version") and left a table of neither, and
        FerretDB answered their concurrent upserts of one row without ``nModified`` (pymongo
        KeyError)."""
        # each replace's own mark: the version names the model (`train similarity` stamps it
        # to the second), so two runs in one second shared it and the second's cleanup kept
        # the first's rows of items it did not write: a table of both
        mark = uuid.uuid4().hex
        ops: list[Any] = [
            ReplaceOne(
                {"_id": str(src)},
                {
                    "_id": str(src),
                    "n": encode_row(row),
                    "k": len(row),
                    "version": version,
                    "w": mark,
                },
                upsert=True,
            )
            for src, row in sorted(rows.items())
            if row
        ]
        held = lease(
            self.locks,
            [REPLACE_LOCK],
            lease_s=self.lease_s,
            wait_s=self.wait_s,
            what=ITEM_SIMILARITY,
        )
        async with held:
            await bulk_write_chunked(self.coll, ops)
            with backend_errors(f"{ITEM_SIMILARITY} cleanup failed"):
                await self.coll.bulk_write([DeleteMany({"w": {"$ne": mark}})])
        return len(ops)

    async def rows(self, item_ids: Iterable[str]) -> dict[str, dict[str, float]]:
        """``{item: {dst: w}}`` for the ``item_ids`` that have a row (``_id`` lookups)."""
        src = list(dict.fromkeys(str(i) for i in item_ids))
        out: dict[str, dict[str, float]] = {}
        for k in range(0, len(src), READ_CHUNK):
            with backend_errors(f"{ITEM_SIMILARITY} lookup failed"):
                docs = await self.coll.find(
                    {"_id": {"$in": src[k : k + READ_CHUNK]}}, projection={"n": 1}
                ).to_list(None)
            out.update((d["_id"], decode_row(d.get("n"))) for d in docs)
        return out
