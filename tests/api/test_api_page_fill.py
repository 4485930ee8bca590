"""A page one refused candidate source left short, filled from the degraded fallback's lists
inside the served pipeline (``Discovery.fill``: ``api._fallback.Fallback.fill``), on the real
engine behind the fault proxy (``tests/http_faults.py``, ``rewrite_if``: one ``_msearch``
sub-search answered 429). The page is full; every item obeys the member's hard rules as
MongoDB holds them (a listed item the store paused since is dropped by the page's re-check);
the served-list log and the exposure count hold exactly the page shown, the filled rows
marked; nothing is filled when no source failed.

The catalogue is the API tests' (same seed and size), in an index and database of its own: on
the shared one, items and likes other tests had added (in any order, on any test worker) could
fill the page without the lists."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from api_support import h, serve_faulty, write_catalogue

from opendisco import Settings, clients
from opendisco.api import create_key
from opendisco.api._fallback import DEADLINE
from opendisco.serving import read_rule_fields

_REJECTED = {"error": {"type": "es_rejected_execution_exception", "reason": "queue"}, "status": 429}
FOR_YOU = "/v1/users/u5/recommendations?k=10&explain=true"
SEARCH = "/v1/search?q=hiking&k=10&user_id=u5&explain=true"


@pytest.fixture(scope="module")
def fill_settings(api_settings: Settings) -> Settings:
    return api_settings.model_copy(
        update={
            "index_alias": f"{api_settings.index_alias}-fill",
            "mongo_db": f"{api_settings.mongo_db}fill",
        }
    )


@pytest.fixture(scope="module")
async def fill_db(fill_settings: Settings, model: Any) -> Any:
    """The catalogue written and reindexed in ``fill_settings``' namespace; its database, a
    synchronous client's."""
    from opendisco.ingest import Embedder

    await write_catalogue(fill_settings, embedder=Embedder(fill_settings, model=model))
    client = clients.mongo(fill_settings)
    yield client[fill_settings.mongo_db]
    client.close()


@pytest.fixture(scope="module")
def admin_key(fill_db: Any) -> str:
    return create_key(fill_db, "fill", ["admin"])[0]


def _refuse(n: int) -> Any:
    """The ``n``-th sub-search of every candidate ``_msearch`` refused (a search queue full)."""

    def rewrite(method: str, path: str, answer: dict[str, Any]) -> dict[str, Any] | None:
        if not path.endswith("/_msearch"):
            return None
        responses = list(answer["responses"])
        responses[n] = _REJECTED
        return {**answer, "responses": responses}

    return rewrite


def _filled(body: Mapping[str, Any]) -> list[str]:
    return [it["id"] for it in body["items"] if "fallback" in it["sources"]]


async def _logged(mongo_db: Any, rid: str) -> dict[str, Any]:
    for _ in range(100):
        if doc := mongo_db["served_lists"].find_one({"_id": rid}):
            return dict(doc)
        await asyncio.sleep(0.05)
    raise AssertionError(f"served list {rid} not logged")


async def _check(
    rt: Any, mongo_db: Any, body: Mapping[str, Any], counted: Sequence[list[str]]
) -> None:
    """Every item obeys u5's rules on MongoDB's fields; the log and the count are the page."""
    ids = [it["id"] for it in body["items"]]
    rules = await rt.discovery.rules_for("u5")
    stored = await read_rule_fields(rt.db[rt.settings.items_collection], ids, "test")
    assert {i: rules.broken(i, stored.get(i, {})) for i in ids} == dict.fromkeys(ids), body
    doc = await _logged(mongo_db, body["request_id"])
    assert doc["degraded"] is body["degraded"]
    assert [doc["ids"][r] for r in doc["shown"]] == ids
    filled = {doc["ids"][r] for r in doc.get("filled", [])}
    assert filled & set(ids) == set(_filled(body))
    assert counted[-1] == ids  # counted once, when picked: the page shown


async def test_a_refused_source_fills_the_page_through_every_rule_and_logs_it(
    fill_settings: Settings, fill_db: Any, admin_key: str
) -> None:
    key, mongo_db = admin_key, fill_db
    async with serve_faulty(fill_settings, api_breaker_failures=100) as (proxy, client):
        rt = client.app.state.runtime
        counted: list[list[str]] = []
        count = rt.discovery.caps.count

        def counting(items: Sequence[Mapping[str, Any]], request_id: str | None) -> None:
            counted.append([str(it["id"]) for it in items])
            count(items, request_id)

        rt.discovery.caps.count = counting
        # nothing failed: nothing filled, no fill step
        whole = (await client.get(FOR_YOU, headers=h(key))).json()
        assert whole["degraded"] is False and len(whole["items"]) == 10
        assert not _filled(whole) and "fill_ms" not in whole["explain"]["timings_ms"]
        # trending refused: its 20 candidates gone, the page filled from the lists
        proxy.rewrite_if = _refuse(0)
        body = (await client.get(FOR_YOU, headers=h(key))).json()
        assert list(body["explain"]["source_errors"]) == ["trending"], body["explain"]
        assert body["degraded"] is True and len(body["items"]) == 10, body["items"]
        assert _filled(body)
        await _check(rt, mongo_db, body, counted)
        # a listed item paused in MongoDB since the lists' refresh: the re-check drops it
        gone = _filled(body)[0]
        items = mongo_db[fill_settings.items_collection]
        items.update_one({"_id": gone}, {"$set": {"available": False}})
        try:
            again = (await client.get(FOR_YOU, headers=h(key))).json()
            assert again["degraded"] is True and len(again["items"]) == 10, again
            assert gone not in [it["id"] for it in again["items"]]
            assert again["explain"]["filtered"].get("available", 0) >= 1
            await _check(rt, mongo_db, again, counted)
        finally:
            items.update_one({"_id": gone}, {"$set": {"available": True}})
        # a search with its semantic source refused
        proxy.rewrite_if = _refuse(1)
        found = (await client.get(SEARCH, headers=h(key))).json()
        assert list(found["explain"]["source_errors"]) == ["semantic"], found["explain"]
        assert found["degraded"] is True and len(found["items"]) == 10, found["items"]
        await _check(rt, mongo_db, found, counted)
        # bounded: no time left past the ranking's reserve, or a stale cap list: no fill
        fallback, loop = rt.fallback, asyncio.get_running_loop()
        plan = await rt.discovery.plan("for_you", 10, user_id="u5")
        assert len(await fallback.fill(plan, 10, frozenset())) == 10
        token = DEADLINE.set(loop.time() + fallback.fill_reserve_s - 0.01)
        try:
            assert await fallback.fill(plan, 10, frozenset()) == []
        finally:
            DEADLINE.reset(token)
        clock = fallback.clock
        fallback.clock = lambda: clock() + 3 * fallback.refresh_s
        assert await fallback.fill(plan, 10, frozenset()) == []
