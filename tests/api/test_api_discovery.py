"""Endpoints against the real Discovery on a small real api_catalogue."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from api_support import h, serve, serve_faulty

from opendisco import Settings


@pytest.fixture
async def api(api_settings: Settings, api_catalogue: dict[str, Any], keys: dict[str, str]) -> Any:
    async with serve(api_settings) as client:
        yield client


def _ok(resp: Any) -> dict[str, Any]:
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["request_id"] == resp.headers["X-Request-ID"]
    assert body["template_version"]
    return body


def _broad_user(api_catalogue: dict[str, Any]) -> str:
    """A viewer open to every gender and a wide age range (many eligible profiles)."""
    users = [u for u in api_catalogue["users"] if len(u["pref_genders"]) == 3]
    best = max(users, key=lambda u: u["pref_age_max"] - u["pref_age_min"])
    return str(best["_id"])


async def test_recommendations_page_without_repeats(
    api: Any, keys: dict[str, str], api_catalogue: dict[str, Any]
) -> None:
    user = _broad_user(api_catalogue)
    seen: list[str] = []
    cursor = None
    for page in range(3):
        url = f"/v1/users/{user}/recommendations?k=10" + (f"&cursor={cursor}" if cursor else "")
        body = _ok(await api.get(url, headers=h(keys["read"])))
        if page == 0:
            assert body["degraded"] is False
        assert body["surface"] == "for_you"
        ids = [it["id"] for it in body["items"]]
        assert 0 < len(ids) <= 10
        assert len(set(ids)) == len(ids)
        assert not set(ids) & set(seen), "a page repeated an item of the same session"
        assert all(it["trace"] is None for it in body["items"])
        assert body["explain"] is None
        seen += ids
        cursor = body["next_cursor"]
        assert cursor
    assert len(seen) >= 20
    # a cursor is bound to its user
    resp = await api.get(f"/v1/users/u4/recommendations?cursor={cursor}", headers=h(keys["read"]))
    assert resp.status_code == 422


async def test_similar_and_search(api: Any, keys: dict[str, str]) -> None:
    body = _ok(await api.get("/v1/items/p5/similar?k=8&user_id=u1", headers=h(keys["read"])))
    ids = [it["id"] for it in body["items"]]
    assert ids and "p5" not in ids and len(ids) <= 8
    assert body["degraded"] is False
    body = _ok(await api.get("/v1/search?q=jazz%20coffee&k=5", headers=h(keys["read"])))
    assert body["degraded"] is False and 0 < len(body["items"]) <= 5


async def test_explain_for_admin(api: Any, keys: dict[str, str]) -> None:
    body = _ok(await api.get("/v1/search?q=hiking&explain=true", headers=h(keys["admin"])))
    assert body["explain"], "admin explain must carry sources/scores/rendered query"
    assert body["items"]


async def test_served_lists_are_logged(api: Any, keys: dict[str, str], mongo_db: Any) -> None:
    """The API's request id names the served list the pipeline's side effect logs, with the
    feature rows the ranker scored and the positions shown."""
    rid = f"imp-{uuid.uuid4().hex[:8]}"
    body = _ok(
        await api.get(
            "/v1/users/u7/recommendations?k=5", headers={**h(keys["read"]), "X-Request-ID": rid}
        )
    )
    assert body["request_id"] == rid
    for _ in range(50):
        doc = mongo_db["served_lists"].find_one({"_id": rid})
        if doc:
            break
        await asyncio.sleep(0.1)
    assert doc is not None
    assert doc["user_id"] == "u7" and doc["requested_surface"] == "for_you"
    assert doc["version"] == body["template_version"]
    assert [doc["ids"][r] for r in doc["shown"]] == [it["id"] for it in body["items"]]
    assert doc["features"] and doc["X"] and len(doc["propensity"]) == len(body["items"])


async def test_duplicate_event_ids_are_counted_once(
    api: Any, keys: dict[str, str], mongo_db: Any
) -> None:
    tag = uuid.uuid4().hex[:8]
    events = [
        {"id": f"e-{tag}-1", "user_id": "u2", "item_id": "p9", "type": "click"},
        {"id": f"e-{tag}-2", "user_id": "u2", "item_id": "p10", "type": "like"},
    ]
    first = _ok_events(
        await api.post("/v1/events", json={"events": events}, headers=h(keys["write"]))
    )
    assert first["accepted"] == 2 and first["duplicates"] == 0 and first["rejected"] == []
    again = _ok_events(
        await api.post("/v1/events", json={"events": events[:1]}, headers=h(keys["write"]))
    )
    assert again["accepted"] == 0 and again["duplicates"] == 1
    assert mongo_db["events"].count_documents({"_id": f"e-{tag}-1"}) == 1


def _ok_events(resp: Any) -> dict[str, Any]:
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["request_id"] == resp.headers["X-Request-ID"]
    return body


async def test_ops_endpoints(api: Any, keys: dict[str, str]) -> None:
    assert (await api.get("/healthz")).json() == {"status": "ok"}
    ready = await api.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {
        "opensearch": True,
        "mongo": True,
        "encoder": True,
    }
    for probe in ("/healthz", "/readyz"):  # a load balancer's HEAD probe (it was 405)
        head = await api.head(probe)
        assert head.status_code == 200 and not head.content, (probe, head.status_code)
    await api.get("/v1/users/u1/recommendations?k=3", headers=h(keys["read"]))
    text = (await api.get("/metrics")).text
    assert 'route="/v1/users/{user_id}/recommendations"' in text
    assert "opendisco_api_breaker_state 0.0" in text
    spec = (await api.get("/openapi.json")).json()
    assert set(spec["paths"]) >= {
        "/v1/users/{user_id}/recommendations",
        "/v1/items/{item_id}/similar",
        "/v1/search",
        "/v1/events",
    }


async def test_served_profiles_reach_the_processs_copy_of_the_exposure_counters(
    api: Any, keys: dict[str, str], api_catalogue: dict[str, Any]
) -> None:
    # the features read the counters from the process's copy (signals.ExposureMirror), kept
    # by a background task of the API: the profiles it serves are counted there within seconds
    copy = api.app.state.runtime.discovery.copies.exposure
    user = _broad_user(api_catalogue)
    body = _ok(await api.get(f"/v1/users/{user}/recommendations?k=10", headers=h(keys["read"])))
    served = [it["id"] for it in body["items"] if it["id"].startswith("p")]
    assert served
    for _ in range(150):
        got = await copy.read(served)
        if copy.fresh() and all(got[i].count >= 1 for i in served):
            break
        await asyncio.sleep(0.1)
    assert copy.fresh() and copy.items, "the API keeps no fresh copy"
    assert all(got[i].count >= 1 for i in served), {i: got[i] for i in served}


async def test_a_session_with_nothing_left_to_serve_ends(
    api: Any, keys: dict[str, str], api_catalogue: dict[str, Any]
) -> None:
    # before: once a session had served every eligible profile (39 here at k=100), each next
    # page was empty yet carried a next cursor again (its expiry renewed): a client paging
    # `while next_cursor` looped on empty pages for good, each one logged as a served list
    user = _broad_user(api_catalogue)
    url = f"/v1/users/{user}/recommendations?k=100"
    seen: list[str] = []
    cursor, pages = None, 0
    while pages < 5:
        body = _ok(
            await api.get(url + (f"&cursor={cursor}" if cursor else ""), headers=h(keys["read"]))
        )
        assert body["degraded"] is False
        ids = [it["id"] for it in body["items"]]
        assert not set(ids) & set(seen)
        seen += ids
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
        assert ids, "an empty page carried a next cursor"
    assert cursor is None and 0 < len(seen) < 100 * (pages - 1), (pages, len(seen))


async def test_a_retried_request_id_counts_its_list_toward_exposure_once(
    api_settings: Settings, api_catalogue: dict[str, Any], keys: dict[str, str]
) -> None:
    # before: a client retrying a page with its X-Request-ID (6 at once, the same cursor) got
    # the same list 6 times, logged once in served_lists yet counted 6 times toward exposure
    # (its caps reached 6x early); a repeated id on another list is still counted
    settings = api_settings.model_copy(update={"exposure_flush_s": 3600.0})  # none flushed
    user, read = _broad_user(api_catalogue), h(keys["read"])
    url = f"/v1/users/{user}/recommendations?k=5"
    async with serve(settings) as client:
        pending = client.app.state.runtime.discovery.served.pending
        first = _ok(await client.get(url, headers=read))
        page = f"{url}&cursor={first['next_cursor']}"
        rid = {"X-Request-ID": f"retry-{uuid.uuid4().hex[:8]}"}
        answers = await asyncio.gather(*[client.get(page, headers=read | rid) for _ in range(6)])
        lists = {tuple(it["id"] for it in _ok(r)["items"]) for r in answers}
        assert len(lists) == 1, lists  # the same page each time
        (shown,) = lists
        assert shown and {i: pending[i] for i in shown} == dict.fromkeys(shown, 1)
        _ok(await client.get(page, headers=read))  # another request id: shown again
        assert {i: pending[i] for i in shown} == dict.fromkeys(shown, 2)
        # the same id on another list (a client sending one id every time) is counted
        again = _ok(await client.get(url, headers=read | rid))
        ids = [it["id"] for it in again["items"]]
        assert ids == [it["id"] for it in first["items"]]
        assert {i: pending[i] for i in ids} == dict.fromkeys(ids, 2)


async def test_a_retried_request_id_counts_its_degraded_list_toward_exposure_once(
    api_settings: Settings, api_catalogue: dict[str, Any], keys: dict[str, str]
) -> None:
    # before: the fallback's answer to each retry (the engine failing) was counted again
    user, read = _broad_user(api_catalogue), h(keys["read"])
    url = f"/v1/users/{user}/recommendations?k=5"
    update = {"exposure_flush_s": 3600.0, "api_breaker_failures": 1}
    async with serve_faulty(api_settings, **update) as (proxy, client):
        pending = client.app.state.runtime.discovery.served.pending
        first = _ok(await client.get(url, headers=read))
        proxy.failing = True
        page = f"{url}&cursor={first['next_cursor']}"
        rid = {"X-Request-ID": f"retry-{uuid.uuid4().hex[:8]}"}
        lists = set()
        for _ in range(4):
            body = _ok(await client.get(page, headers=read | rid))
            assert body["degraded"] is True
            lists.add(tuple(it["id"] for it in body["items"]))
        assert len(lists) == 1, lists
        (shown,) = lists
        assert shown and not set(shown) & {it["id"] for it in first["items"]}
        assert {i: pending[i] for i in shown} == dict.fromkeys(shown, 1)
