"""A served list the store refuses for good does not hold back the lists behind it (pure: the
refusals of the driver and of a MongoDB server stood in for by a collection that raises them;
FerretDB takes such documents, ``test_signals_served_spool.py`` writes one through it)."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import numpy as np
from pymongo.errors import BulkWriteError, DocumentTooLarge, WriteError

from opendisco.rerank import FEATURE_NAMES
from opendisco.signals import ServedList, ServedLog
from opendisco.signals._served_list import encode_list


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


async def test_a_list_that_cannot_be_encoded_is_dropped_not_the_flusher() -> None:
    """A caller's bad list (a shown row it does not have) raised out of the flusher's encoding:
    the flusher ended with its batch taken off the queue, lost uncounted."""
    coll = Refusing()
    log = ServedLog({"served_lists": coll})
    log._ready = True
    bad = replace(_served("bad-rows"), ids=["x"], shown=[3])
    for s in (_served("a"), bad, _served("b")):
        log.log(s)
    while await log.flush():
        pass
    assert (log.pending, log.written, log.dropped) == (0, 2, 1)
    log.log(bad)  # alone in its batch
    assert await log.flush() == 1 and log.dropped == 2


def test_non_finite_floats_are_stored_as_none() -> None:
    """FerretDB closes the connection on a NaN (the list then held the whole log back as if
    the store were down) and refuses an infinity: both are stored as None (pure)."""
    s = replace(
        _served("nan"),
        ids=["x", "y"],
        shown=[0, 1],
        propensity=[float("nan"), 0.5],
        pool=[0, 1],
        pool_w=[float("inf"), 1.0],
        policy={"kind": "pl", "t": float("nan"), "w": [1.0, float("-inf")]},
        experiments=[{"experiment": "e", "share": float("nan")}],
    )
    doc = encode_list(s, 10, np.random.default_rng(0))
    assert doc["propensity"] == [None, 0.5] and doc["pool_w"] == [None, 1.0]
    assert doc["policy"] == {"kind": "pl", "t": None, "w": [1.0, None]}
    assert doc["experiments"] == [{"experiment": "e", "share": None}]


class SilentAfterRefusal(Refusing):
    """The store goes silent (paused, no reset) once a batch was refused for a huge list: the
    one-by-one inserts that follow are never answered."""

    async def insert_one(self, doc: dict[str, Any]) -> None:
        await asyncio.Event().wait()


async def test_a_silent_store_on_the_one_by_one_path_fails_within_the_write_timeout() -> None:
    """The one-by-one inserts after a refused batch had no write timeout: a store gone
    silent there held the flusher until the driver's socket timeout, the lists logged
    meanwhile waiting in memory (lost on a kill -9)."""
    log = ServedLog({"served_lists": SilentAfterRefusal()}, write_timeout_s=0.2)
    log._ready = True
    for rid in ("a", "huge-1", "b"):
        log.log(_served(rid))
    assert await asyncio.wait_for(log.flush(), 10) == 0  # failed, not hung
    assert (log.pending, log.written, log.failed) == (3, 0, 3)  # queued again
