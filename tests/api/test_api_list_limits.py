"""A member's stored lists at the size limits of the engine's query, on the real servers: a
member blocked by more members than ``exclude_owners`` takes (50,000), or with more excluded
ids than ``exclude_ids`` takes (20,000), gets the degraded fallback's answer — every rule
checked in process, nobody they may not see — on every path; not a 422 (the template's
parameter error blamed the caller for the member's stored lists: no answer at all); so does
one whose ids are long enough that the query is over the engine's body limit (its 413). The
circuit breaker counts neither: one member's lists, not the engine down.

The lists hold the owners of (or the ids of) two thirds of the profiles, the most popular, so
an answer that dropped them would show them (checked: the anonymous list does)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from api_support import h, serve, wait_fallback
from test_api_safety import V, _profile, catalogue, namespaced

from opendisco import Settings, clients
from opendisco._stored import store_vector
from opendisco.api import create_key

N_OK = 30
#: V, a man of 30 who wants women aged 25-35, would see any of them
TOP = [f"ok{i}" for i in range(10, N_OK)]  # the 20 most popular profiles
URLS = [
    f"/v1/users/{V}/recommendations?k=10",
    f"/v1/items/ok0/similar?k=10&user_id={V}",
    f"/v1/search?q=jazz%20hiking&k=10&user_id={V}",
]


@pytest.fixture(scope="module")
def lim_settings(api_settings: Settings) -> Settings:
    return namespaced(api_settings, "lim")


@pytest.fixture(scope="module")
async def lim_key(lim_settings: Settings, model: Any) -> str:
    from opendisco.ingest import Embedder, write_sample
    from opendisco.ingest._reindex import reindex

    user = next(u for u in catalogue()[1] if u["_id"] == V)  # the safety suite's V
    items = [_profile(f"ok{i}", f"o{i}", 10.0 + i) for i in range(N_OK)]
    write_sample(lim_settings, items, [user])
    await reindex(lim_settings, embedder=Embedder(lim_settings, model=model))
    with clients.mongo(lim_settings) as mc:
        return create_key(mc[lim_settings.mongo_db], "lim", ["read"])[0]


@pytest.fixture(scope="module")
def lim_admin(lim_settings: Settings, lim_key: str) -> str:
    with clients.mongo(lim_settings) as mc:
        return create_key(mc[lim_settings.mongo_db], "lim-admin", ["read", "admin"])[0]


def _store_lists(settings: Settings, *, liked: list[str], blocked_by: list[str]) -> None:
    """V's state and blocks written whole (bulk, as an import would: no event path)."""
    vec = np.random.default_rng(1).normal(size=384)
    state = {
        "_id": V,
        "positives": [],
        "negatives": [],
        "seen": [],
        "liked": liked,
        "blocked": [],
        "fatigue": [],
        "vector": store_vector((vec / np.linalg.norm(vec)).tolist()),
        "version": 1,
        "applied": [],
    }
    with clients.mongo(settings) as mc:
        db = mc[settings.mongo_db]
        db.user_state.replace_one({"_id": V}, state, upsert=True)
        db.member_blocks.replace_one({"_id": V}, {"_id": V, "blocked_by": blocked_by}, upsert=True)


LISTS = {
    # 60,000 members blocked V, the owners of the top profiles among them
    "blocked_by_60k": lambda: {
        "liked": [],
        "blocked_by": [f"o{i}" for i in range(10, N_OK)] + [f"b{i}" for i in range(59_980)],
    },
    # V liked 25,000 items, the top profiles among them
    "liked_25k": lambda: {"liked": [*TOP, *(f"l{i}" for i in range(24_980))], "blocked_by": []},
}


@pytest.mark.parametrize("lists", list(LISTS))
async def test_lists_past_the_query_bounds_get_the_checked_fallback(
    lists: str, lim_settings: Settings, lim_key: str
) -> None:
    _store_lists(lim_settings, **LISTS[lists]())
    async with serve(lim_settings) as client:
        await wait_fallback(client)
        anon = await client.get("/v1/search?q=jazz%20hiking&k=10", headers=h(lim_key))
        assert set(TOP) & {it["id"] for it in anon.json()["items"]}  # not vacuous
        for url in URLS:
            resp = await client.get(url, headers=h(lim_key))
            assert resp.status_code == 200, (url, resp.text)
            body = resp.json()
            ids = [it["id"] for it in body["items"]]
            assert body["degraded"] is True and ids, (url, body)
            assert not set(ids) & set(TOP), (url, ids)
        # a member's lists are not the engine failing: the breaker counts none of them
        assert client.app.state.runtime.breaker.failures == 0


async def test_a_query_over_the_engines_body_limit_degrades_without_the_breaker(
    lim_settings: Settings, lim_key: str
) -> None:
    """Lists within the parameters' bounds, of ids long enough (500 characters) that the
    ``_msearch`` of V's five sources is over the engine's ``http.max_content_length`` (100 MB):
    the engine's 413 degrades the answer, checked, and is not counted as the engine failing
    (it answered; counted, five such requests of one member opened the breaker for all)."""
    long = [f"{i}".ljust(500, "x") for i in range(30_000)]
    _store_lists(lim_settings, liked=[*TOP, *long[:19_000]], blocked_by=long)
    behaviour = np.random.default_rng(2).normal(size=lim_settings.behaviour_dim)
    with clients.mongo(lim_settings) as mc:  # a fifth source: the behaviour k-NN
        mc[lim_settings.mongo_db].user_state.update_one(
            {"_id": V}, {"$set": {"behaviour": store_vector(behaviour.tolist())}}
        )
    async with serve(lim_settings) as client:
        await wait_fallback(client)
        resp = await client.get(URLS[0], headers=h(lim_key))
        body = resp.json()
        assert resp.status_code == 200 and body["degraded"] is True, body
        ids = [it["id"] for it in body["items"]]
        assert ids and not set(ids) & set(TOP), ids
        assert client.app.state.runtime.breaker.failures == 0


async def test_a_preview_of_such_a_member_is_a_422_naming_the_bound(
    lim_settings: Settings, lim_admin: str
) -> None:
    """The playground's preview has no degraded answer to give: a member whose lists are past
    the query's bounds is a 422 naming the list and its bound, without Retry-After (the same
    request is refused again; it was a 503 "the search engine did not answer; retry later")."""
    _store_lists(lim_settings, **LISTS["blocked_by_60k"]())
    async with serve(lim_settings) as client:
        resp = await client.post(
            "/playground/api/compare", json={"user_id": V, "k": 5}, headers=h(lim_admin)
        )
    assert resp.status_code == 422, resp.text
    assert "Retry-After" not in resp.headers
    err = resp.json()["error"]
    assert err["type"] == "SearchTooLarge", err
    assert "too large for the search engine" in err["message"], err
    assert "exclude_owners" in err["message"] and "50000" in err["message"], err
    assert "'b1'" not in err["message"] and "'o10'" not in err["message"]  # counts, not ids


@pytest.fixture
async def over_capped(lim_settings: Settings, lim_key: str) -> AsyncIterator[None]:
    """The engine's cap list (``_capped``) over ``index.max_terms_count`` (65,536 ids), none
    of them a catalogue item: every candidate query that reads it fails in the engine."""
    from opendisco.signals import ExposureStore, exposure_index

    _store_lists(lim_settings, liked=[], blocked_by=[])
    ids = [f"c{i}" for i in range(70_000)]
    os_client = clients.async_opensearch(lim_settings)
    index = exposure_index(lim_settings)
    try:
        await ExposureStore(os_client, lim_settings).ensure()
        doc = {"capped": {"ids": ids, "until": dict.fromkeys(ids, 2**62)}}
        await os_client.index(index=index, id="_capped", body=doc, params={"refresh": "true"})
        yield
    finally:
        await os_client.delete(index=index, id="_capped", params={"refresh": "true"})
        await os_client.close()


async def test_a_cap_list_past_the_terms_bound_is_no_empty_answer(
    lim_settings: Settings, over_capped: None, model: Any
) -> None:
    """``cold_start``'s ``fresh`` source answers without reading the cap list when no item is
    fresh (the engine rewrites its range to match nothing), beside the sources that failed:
    with no page fill (the playground's pipelines, ``opendisco recommend``), or one that has
    nothing, that was an empty page, degraded, served as if nobody were eligible. It is the
    sources' failure: raised, so the API answers from its checked fallback."""
    from opendisco._exceptions import SearchBackendError
    from opendisco.serving import Discovery

    os_client = clients.async_opensearch(lim_settings)
    mongo = clients.mongo_async(lim_settings)
    try:
        disc = Discovery(lim_settings, os_client, mongo[lim_settings.mongo_db], model=model)
        disc.parts = replace(disc.parts, side_effects=[])
        with pytest.raises(SearchBackendError, match="max_terms_count"):
            await disc.recommend(V, surface="cold_start", k=10)
    finally:
        await os_client.close()
        await mongo.close()


async def test_the_api_answers_every_surface_past_the_terms_bound(
    lim_settings: Settings, lim_key: str, over_capped: None
) -> None:
    """The same cap list through the API: each page is filled from the fallback (its cap list
    checked) or answered by it; never empty, never an error. The fallback's own lists are
    engine queries that read the cap list too: they fail to refresh, and it answers from
    MongoDB's most popular items (``fallback-popular``) and the cap list it stored. The cap
    list's length is a metric, for the alert before it breaks."""
    async with serve(lim_settings) as client:  # its lists' refresh fails: that list too
        for url in (
            f"/v1/users/{V}/recommendations?k=10&surface=cold_start",
            f"/v1/users/{V}/recommendations?k=10",
            f"/v1/search?q=jazz%20hiking&k=10&user_id={V}",
        ):
            resp = await client.get(url, headers=h(lim_key))
            body = resp.json()
            assert resp.status_code == 200 and body["degraded"] is True, (url, resp.text)
            assert body["items"], (url, body)
        # what the operator's alert reads (docs/operations.md: past 32,768 ids)
        lists = client.app.state.runtime.fallback.lists
        for _ in range(100):
            if lists.capped_read is not None:
                break
            await asyncio.sleep(0.1)
        text = (await client.get("/metrics")).text
        assert "opendisco_api_exposure_capped 70000.0" in text, text[-2000:]


async def test_a_degraded_member_is_read_once_a_request(
    lim_settings: Settings, lim_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fallback's rules are built from the pipeline's read of the member: one read of a
    member blocked by 60,000 others a request (a 1 MB document, 0.2–0.6 s on FerretDB; the
    fallback read it again). Nothing is kept from one request to the next."""
    from opendisco.signals import BlockStore

    _store_lists(lim_settings, **LISTS["blocked_by_60k"]())
    reads: list[str] = []
    real = BlockStore.get

    async def counted(self: BlockStore, user_id: str) -> Any:  # the real read, counted
        reads.append(user_id)
        return await real(self, user_id)

    monkeypatch.setattr(BlockStore, "get", counted)
    async with serve(lim_settings) as client:
        await wait_fallback(client)
        for n in (1, 2):
            resp = await client.get(URLS[0], headers=h(lim_key))
            body = resp.json()
            ids = [it["id"] for it in body["items"]]
            assert resp.status_code == 200 and body["degraded"] is True, body
            assert ids and not set(ids) & set(TOP), ids
            assert reads == [V] * n, reads
