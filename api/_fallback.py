"""The degraded answer: trending per surface, refreshed in the background, kept in memory.

Before the first successful refresh (cold process, OpenSearch already down) it falls back to
the most popular available items read straight from MongoDB. Only when both are empty is
there nothing to serve (the caller answers 503 then, never an empty list).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from opendisco._exceptions import Overloaded
from opendisco.serving import Discovery, Recommendation

if TYPE_CHECKING:
    from motor.motor_asyncio import AsyncIOMotorDatabase

__all__ = ["Fallback", "FallbackAnswer", "to_served"]

log = logging.getLogger("opendisco.api")

_VECTOR_FIELDS = frozenset({"embedding", "behaviour", "_id"})


def _plain(value: Any) -> Any:
    """JSON-friendly copy (numpy scalars/arrays, tuples) of an item field."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def to_served(rec: Recommendation, with_trace: bool = False) -> dict[str, Any]:
    """A :class:`~opendisco.serving.Recommendation` as a response item dict (no vectors)."""
    trace = rec.trace if with_trace else None
    return {
        "id": str(rec.id),
        "score": float(rec.score or 0.0),
        "sources": {str(k): float(v) for k, v in rec.sources.items()},
        "item": {k: _plain(v) for k, v in rec.item.items() if k not in _VECTOR_FIELDS},
        "trace": _plain(trace) if trace is not None else None,
    }


def _raise_if_cancelling() -> None:
    # a backend client may turn our cancellation into an ordinary error; do not outlive it
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


@dataclass
class FallbackAnswer:
    items: list[dict[str, Any]]
    template_version: str
    source: str  # "trending" | "mongo"


@dataclass
class _Entry:
    items: list[dict[str, Any]]
    template_version: str
    at: float


@dataclass
class Fallback:
    discovery: Discovery
    db: AsyncIOMotorDatabase[dict[str, Any]]
    k: int = 200
    items_collection: str = "items"
    timeout_s: float = 5.0
    clock: Callable[[], float] = time.monotonic
    mongo_cache_s: float = 10.0
    _list: _Entry | None = None
    _mongo: _Entry | None = None
    refreshed_ok: int = 0
    refresh_failures: int = 0

    @property
    def ready(self) -> bool:
        return self._list is not None

    async def refresh(self) -> bool:
        """Refresh the non-personal list from ``Discovery.trending`` (one list serves every
        surface); keep the old one on failure."""
        _raise_if_cancelling()
        try:
            recs = await asyncio.wait_for(self.discovery.trending(self.k), self.timeout_s)
            items = [to_served(r) for r in recs.items]
        except Exception as exc:  # any backend trouble: keep what we have
            log.warning("fallback refresh failed: %r", exc)
            self.refresh_failures += 1
            return False
        if items:
            self._list = _Entry(items, recs.version, self.clock())
        self.refreshed_ok += 1
        return True

    async def run(self, every_s: float) -> None:
        """Refresh forever (a background task); the first refresh happens at once."""
        while True:
            await self.refresh()
            _raise_if_cancelling()
            await asyncio.sleep(every_s)

    async def _popular(self) -> _Entry:
        now = self.clock()
        if self._mongo is not None and now - self._mongo.at < self.mongo_cache_s:
            return self._mongo
        cursor = (
            self.db[self.items_collection]
            .find(
                {"deleted": {"$ne": True}, "available": {"$ne": False}},
                {"embedding": 0, "behaviour": 0},
            )
            .sort("popularity", -1)
            .limit(self.k)
        )
        docs = await asyncio.wait_for(cursor.to_list(self.k), self.timeout_s)
        items = []
        for d in docs:
            rec = Recommendation(
                id=str(d["_id"]),
                score=float(d.get("popularity") or 0.0),
                sources={},
                item={**d, "id": str(d["_id"])},
            )
            items.append(to_served(rec))
        self._mongo = _Entry(items, "fallback-popular", now)
        return self._mongo

    async def get(self, surface: str, k: int, exclude: Iterable[str] = ()) -> FallbackAnswer:
        """Up to ``k`` items for ``surface`` minus ``exclude``; :class:`Overloaded` if none."""
        skip = set(exclude)
        entry = self._list
        source = "trending"
        if entry is None:
            source = "mongo"
            try:
                entry = await self._popular()
            except Exception as exc:
                raise Overloaded(f"backends unavailable and no fallback yet: {exc!r}", 2.0) from exc
        items = [it for it in entry.items if it["id"] not in skip][:k]
        if not items:
            raise Overloaded("backends unavailable and the fallback is exhausted", 2.0)
        return FallbackAnswer(items, entry.template_version, source)
