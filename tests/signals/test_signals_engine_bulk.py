"""``signals._engine_bulk.bulk_updates``: how a counters ``_bulk`` answer is read item by item
(pure client logic over a scripted engine; the real engine's answers are exercised by
test_signals_claims_faults through the fault proxy)."""

from __future__ import annotations

from typing import Any

import pytest
from opensearchpy.exceptions import TransportError

from opendisco import SearchBackendError
from opendisco.signals._engine_bulk import bulk_updates


class _Engine:
    """Answers bulk number ``n`` by ``rounds[n]``: id -> status (absent: 200); a round that is
    an int fails the whole request with that status."""

    def __init__(self, *rounds: dict[str, int] | int) -> None:
        self.rounds = list(rounds)
        self.sent: list[list[str]] = []

    async def bulk(self, body: list[dict[str, Any]]) -> dict[str, Any]:
        ids = [line["update"]["_id"] for line in body[::2]]
        self.sent.append(ids)
        plan = self.rounds[len(self.sent) - 1]
        if isinstance(plan, int):
            raise TransportError(plan, "es_rejected_execution_exception", {})
        items = []
        for i in ids:
            status = plan.get(i, 200)
            res: dict[str, Any] = {"_id": i, "status": status}
            if status >= 300:
                res["error"] = {"type": "es_rejected_execution_exception" if status == 429 else "x"}
            items.append({"update": res})
        return {"errors": any("error" in it["update"] for it in items), "items": items}


def _pairs(*ids: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [({"update": {"_index": "c", "_id": i}}, {"script": {}}) for i in ids]


async def test_only_rejected_items_are_sent_again_until_applied_or_out_of_tries() -> None:
    engine = _Engine({"a": 429, "b": 429, "c": 400}, {"a": 429}, {"a": 429})
    applied, failed, unsure = await bulk_updates(engine, _pairs("a", "b", "c", "d"), "t", pause_s=0)
    assert engine.sent == [["a", "b", "c", "d"], ["a", "b"], ["a"]]
    assert sorted(r["_id"] for r in applied) == ["b", "d"]
    assert sorted(failed) == ["a", "c"] and not unsure  # answered: not applied


async def test_a_retry_that_fails_as_a_whole_leaves_its_items_not_applied() -> None:
    engine = _Engine({"a": 429}, 429)
    applied, failed, unsure = await bulk_updates(engine, _pairs("a", "b"), "t", pause_s=0)
    assert [r["_id"] for r in applied] == ["b"] and list(failed) == ["a"]
    # not sent through the transport, whose sends tell a refusal: it may have been applied
    assert unsure == {"a"}


async def test_a_first_request_that_fails_as_a_whole_raises() -> None:
    with pytest.raises(SearchBackendError):
        await bulk_updates(_Engine(429), _pairs("a"), "t", pause_s=0)
    assert await bulk_updates(_Engine(), [], "t") == ([], {}, frozenset())
