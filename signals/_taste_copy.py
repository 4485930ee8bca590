"""Members' tastes as a process's own copy (:class:`~opendisco.signals._copies.LocalCopy`),
for the reciprocal estimate of member candidates (their owners' taste vector, likes and
passes given: :meth:`UserStateStore.tastes` from memory). Rows by ``at``, which every taste
write sets; a copy of more than ``taste_copy_max_members`` tastes is not kept (~1.6 kB each).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from opendisco._backend import backend_errors

from ._copies import LocalCopy
from ._user_state import MEMBER_TASTES, Taste, taste_of

__all__ = ["Taste", "TasteCopy"]


class _TasteRows:
    what = "member tastes"

    def __init__(self, db: Any) -> None:
        self.coll = db[MEMBER_TASTES]

    async def scan(
        self, touched_since_ms: int | None, *, limit: int | None = None
    ) -> dict[str, Taste] | None:
        with backend_errors(f"{MEMBER_TASTES} copy read failed"):
            if limit is not None and await self.coll.estimated_document_count() > limit:
                return None
            flt: dict[str, Any] = {}
            if touched_since_ms is not None:
                flt = {"at": {"$gte": datetime.fromtimestamp(touched_since_ms / 1000, UTC)}}
            docs = await self.coll.find(flt, projection={"at": 0}).to_list(None)
        return {str(d["_id"]): taste_of(d) for d in docs}


class TasteCopy(LocalCopy[Taste]):
    """A process's copy of ``member_tastes``."""

    def __init__(self, db: Any, *, every_s: float, max_items: int, **kw: Any) -> None:
        super().__init__(_TasteRows(db), every_s=every_s, max_items=max_items, **kw)

    def tastes(self, user_ids: Iterable[str], *, stale_ok: bool = False) -> dict[str, Taste] | None:
        """Like :meth:`UserStateStore.tastes` while the copy is fresh, else ``None``;
        ``stale_ok``: from the copy as its last read left it (the store refusing)."""
        rows = self.last_rows() if stale_ok else self.rows()
        if rows is None:
            return None
        return {u: rows[u] for u in map(str, user_ids) if u in rows}
