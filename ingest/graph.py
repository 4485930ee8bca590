"""Co-engagement graph (item–item), mutual likes (user–user) and inbound attention counters.

All three live in MongoDB and grow incrementally from events (one ``bulk_write`` per batch):

* ``item_edges``: ``{_id: "a\\x1fb", src, dst, w, updated_at}``, both directions stored so
  neighbours of a set of items are one ``find({src: {$in: ...}})``.
* ``user_likes``: ``{_id: "u\\x1fv", src, dst, at}``; when the reverse edge exists the pair is
  upserted into ``user_matches``: ``{_id: "a\\x1fb" (sorted), users: [a, b], at}``.
* ``inbound``: ``{_id: "item\\x1fYYYYMMDD", item, day, n}`` — likes/messages a recipient got
  per day (two-sided markets: how much attention a profile already receives).

Increments are at-least-once: a batch re-applied after a crash between the graph write and the
event's ``applied`` mark adds its weights twice (see ``opendisco.ingest.events``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from opendisco._exceptions import StoreBackendError

__all__ = [
    "BULK_CHUNK",
    "INBOUND",
    "ITEM_EDGES",
    "RECENT_FANOUT",
    "SEP",
    "USER_LIKES",
    "USER_MATCHES",
    "InboundCounter",
    "ItemGraph",
    "UserGraph",
    "ensure_graph_indexes",
    "graph_source_query",
    "neighbours_of_recent",
    "top_neighbours",
]

ITEM_EDGES = "item_edges"
#: how many of a user's most recent positives the graph source and feature start from
RECENT_FANOUT = 20
USER_LIKES = "user_likes"
USER_MATCHES = "user_matches"
INBOUND = "inbound"
SEP = "\x1f"
#: write ops per bulk_write: FerretDB 1.24 (SQLite) hangs on one bulk of ~100 updates (measured:
#: 50 fine, 100 never answers), so every bulk of this team is chunked below that
BULK_CHUNK = 50


async def _bulk(coll: Any, ops: list[Any]) -> None:
    from pymongo.errors import PyMongoError

    if not ops:
        return
    try:
        for k in range(0, len(ops), BULK_CHUNK):
            await coll.bulk_write(ops[k : k + BULK_CHUNK], ordered=False)
    except PyMongoError as exc:
        raise StoreBackendError(f"{coll.name} bulk write failed: {exc}") from exc


async def _find(coll: Any, flt: Mapping[str, Any], **kw: Any) -> list[dict[str, Any]]:
    from pymongo.errors import PyMongoError

    try:
        return await coll.find(flt, **kw).to_list(None)
    except PyMongoError as exc:
        raise StoreBackendError(f"{coll.name} lookup failed: {exc}") from exc


async def ensure_graph_indexes(db: Any) -> None:
    from pymongo.errors import PyMongoError

    try:
        await db[ITEM_EDGES].create_index("src")
        await db[ITEM_EDGES].create_index("dst")
        await db[USER_LIKES].create_index("dst")
        await db[USER_MATCHES].create_index("users")
        await db[INBOUND].create_index("item")
    except PyMongoError as exc:
        raise StoreBackendError(f"graph index creation failed: {exc}") from exc


class ItemGraph:
    """Item–item co-engagement weights."""

    def __init__(self, db: Any) -> None:
        self.coll = db[ITEM_EDGES]

    @staticmethod
    def edge_updates(
        pairs: Iterable[tuple[str, str, float]], now: datetime
    ) -> dict[str, tuple[str, str, float]]:
        """Pure: symmetric edge increments keyed by edge id (self-loops dropped, summed)."""
        acc: dict[str, list[Any]] = {}
        for a, b, w in pairs:
            if a == b:
                continue
            for s, d in ((a, b), (b, a)):
                key = f"{s}{SEP}{d}"
                acc.setdefault(key, [s, d, 0.0])[2] += float(w)
        return {k: (s, d, w) for k, (s, d, w) in acc.items()}

    async def add(
        self, pairs: Iterable[tuple[str, str, float]], now: datetime | None = None
    ) -> int:
        """Add co-engagement weight between item pairs (one bulk write); returns edges touched."""
        from pymongo import UpdateOne

        now = now or datetime.now(UTC)
        edges = self.edge_updates(pairs, now)
        ops = [
            UpdateOne(
                {"_id": k},
                {"$inc": {"w": w}, "$set": {"src": s, "dst": d, "updated_at": now}},
                upsert=True,
            )
            for k, (s, d, w) in edges.items()
        ]
        await _bulk(self.coll, ops)
        return len(ops)

    async def weights(self, item_ids: Iterable[str]) -> dict[str, float]:
        """Summed edge weight from ``item_ids`` to every co-engaged item (one query). It is
        both the graph candidate source (:func:`top_neighbours`) and the graph proximity
        feature of those candidates, so a request reads the edges once."""
        src = list(dict.fromkeys(item_ids))
        if not src:
            return {}
        docs = await _find(self.coll, {"src": {"$in": src}}, projection={"dst": 1, "w": 1})
        acc: dict[str, float] = defaultdict(float)
        for d in docs:
            acc[d["dst"]] += float(d.get("w", 0.0))
        return dict(acc)

    async def neighbours(
        self, item_ids: Iterable[str], k: int = 50, exclude: Iterable[str] = ()
    ) -> list[tuple[str, float]]:
        """Items co-engaged with any of ``item_ids``, summed weight, best first (one query)."""
        src = list(dict.fromkeys(item_ids))
        return top_neighbours(await self.weights(src), k, skip=[*src, *exclude])

    async def proximity(self, recent: Iterable[str], candidates: Iterable[str]) -> dict[str, float]:
        """Summed edge weight from the user's recent items to each candidate (one query)."""
        src, dst = list(dict.fromkeys(recent)), list(dict.fromkeys(candidates))
        if not src or not dst:
            return {}
        docs = await _find(
            self.coll,
            {"src": {"$in": src}, "dst": {"$in": dst}},
            projection={"dst": 1, "w": 1},
        )
        acc: dict[str, float] = defaultdict(float)
        for d in docs:
            acc[d["dst"]] += float(d.get("w", 0.0))
        return dict(acc)


class UserGraph:
    """User–user likes and mutual likes (matches)."""

    def __init__(self, db: Any) -> None:
        self.likes = db[USER_LIKES]
        self.matches = db[USER_MATCHES]

    async def add_likes(
        self, likes: Iterable[tuple[str, str]], now: datetime | None = None
    ) -> list[tuple[str, str]]:
        """Record ``(liker, liked)`` edges; returns the pairs that became mutual."""
        from pymongo import UpdateOne

        now = now or datetime.now(UTC)
        pairs = list(dict.fromkeys((a, b) for a, b in likes if a != b))
        if not pairs:
            return []
        await _bulk(
            self.likes,
            [
                UpdateOne(
                    {"_id": f"{a}{SEP}{b}"},
                    {"$set": {"src": a, "dst": b, "at": now}},
                    upsert=True,
                )
                for a, b in pairs
            ],
        )
        reverse = [f"{b}{SEP}{a}" for a, b in pairs]
        found = {d["_id"] for d in await _find(self.likes, {"_id": {"$in": reverse}})}
        mutual = [(a, b) for a, b in pairs if f"{b}{SEP}{a}" in found]
        ops = []
        for a, b in mutual:
            x, y = sorted((a, b))
            ops.append(
                UpdateOne(
                    {"_id": f"{x}{SEP}{y}"}, {"$set": {"users": [x, y], "at": now}}, upsert=True
                )
            )
        await _bulk(self.matches, ops)
        return mutual

    async def mutual(self, user_id: str) -> list[str]:
        docs = await _find(self.matches, {"users": user_id})
        return sorted(u for d in docs for u in d["users"] if u != user_id)


class InboundCounter:
    """Likes/messages received per item per day; summed over a recent window."""

    def __init__(self, db: Any) -> None:
        self.coll = db[INBOUND]

    async def add(self, counts: Iterable[tuple[str, datetime]]) -> None:
        from pymongo import UpdateOne

        acc: dict[tuple[str, str], int] = defaultdict(int)
        for item, ts in counts:
            acc[(item, ts.astimezone(UTC).strftime("%Y%m%d"))] += 1
        await _bulk(
            self.coll,
            [
                UpdateOne(
                    {"_id": f"{item}{SEP}{day}"},
                    {"$inc": {"n": n}, "$set": {"item": item, "day": day}},
                    upsert=True,
                )
                for (item, day), n in acc.items()
            ],
        )

    async def counts(
        self, ids: Iterable[str], days: int = 7, now: datetime | None = None
    ) -> dict[str, int]:
        wanted = list(dict.fromkeys(ids))
        if not wanted:
            return {}
        since = ((now or datetime.now(UTC)) - timedelta(days=days - 1)).strftime("%Y%m%d")
        docs = await _find(self.coll, {"item": {"$in": wanted}, "day": {"$gte": since}})
        acc: dict[str, int] = defaultdict(int)
        for d in docs:
            acc[d["item"]] += int(d.get("n", 0))
        return dict(acc)


def top_neighbours(
    weights: Mapping[str, float], k: int, skip: Iterable[str] = ()
) -> list[tuple[str, float]]:
    """Pure: the ``k`` heaviest entries of ``weights`` not in ``skip``, best first."""
    drop = set(skip)
    kept = ((i, w) for i, w in weights.items() if i not in drop)
    return sorted(kept, key=lambda kv: (-kv[1], kv[0]))[:k]


async def neighbours_of_recent(
    db: Any, state: Any, k: int = 50, fanout: int = RECENT_FANOUT
) -> list[tuple[str, float]]:
    """Co-engaged neighbours of a ``UserState``'s recent positives, minus seen/blocked (a graph
    candidate source; one query)."""
    recent = state.recent_positive_ids[:fanout]
    return await ItemGraph(db).neighbours(recent, k=k, exclude=state.exclude_ids)


def graph_source_query(neighbours: Iterable[tuple[str, float]]) -> dict[str, Any] | None:
    """Pure: an OpenSearch query matching the neighbour ids, scored by co-engagement weight
    (``constant_score`` per id, so the engine's score is the graph weight); None when empty."""
    should = [
        {"constant_score": {"filter": {"term": {"id": i}}, "boost": float(w)}}
        for i, w in neighbours
        if w > 0
    ]
    if not should:
        return None
    return {"bool": {"should": should, "minimum_should_match": 1}}
