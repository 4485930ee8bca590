"""A served list the store refuses for good does not hold back the lists behind it (pure: the
refusals of the driver and of a MongoDB server stood in for by a collection that raises them;
FerretDB takes such documents, ``test_signals_served_spool.py`` writes one through it)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pymongo.errors import BulkWriteError, DocumentTooLarge, WriteError

from opendisco.rerank import FEATURE_NAMES
from opendisco.signals import ServedList, ServedLog


class Refusing:
    """``insert_many``/``insert_one`` as the driver and server answer them: a ``huge`` list is
    over the BSON limit (the driver raises before sending), a ``bad`` one is refused by the
    server (code 121, the others of the unordered insert written)."""

    def __init__(self) -> None:
        self.stored: list[str] = []

    async def insert_many(self, docs: list[dict[str, Any]], ordered: bool = True) -> None:
        assert ordered is False
        if any(d["_id"].startswith("huge") for d in docs):
            raise DocumentTooLarge("BSON document too large")
        bad = [i for i, d in enumerate(docs) if d["_id"].startswith("bad")]
        self.stored += [d["_id"] for d in docs if not d["_id"].startswith("bad")]
        if bad:
            errors = [{"index": i, "code": 121, "errmsg": "validation failed"} for i in bad]
            raise BulkWriteError({"writeErrors": errors, "nInserted": len(docs) - len(bad)})

    async def insert_one(self, doc: dict[str, Any]) -> None:
        if doc["_id"].startswith("huge"):
            raise DocumentTooLarge("BSON document too large")
        if doc["_id"].startswith("bad"):
            raise WriteError("validation failed", 121, {"code": 121})
        self.stored.append(doc["_id"])


def _served(rid: str) -> ServedList:
    at = datetime.now(UTC)
    return ServedList(rid, at, "u1", "s", "s", "v", False, 0, FEATURE_NAMES, None, [], [])


async def test_a_list_no_store_takes_is_dropped_and_counted_the_others_written() -> None:
    coll = Refusing()
    log = ServedLog({"served_lists": coll})
    log._ready = True  # no collection to create: the refusals are the point
    for rid in ("a", "huge-1", "b", "bad-1", "c"):
        log.log(_served(rid))
    while await log.flush():
        pass
    assert (log.pending, log.written, log.dropped, log.failed) == (0, 3, 2, 0)
    assert coll.stored == ["a", "b", "c"]
    for rid in ("d", "bad-2", "e"):  # refused by the server alone
        log.log(_served(rid))
    while await log.flush():
        pass
    assert (log.pending, log.written, log.dropped, log.failed) == (0, 5, 3, 0)
    assert coll.stored == ["a", "b", "c", "d", "e"]
