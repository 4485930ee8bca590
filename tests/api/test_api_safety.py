"""The hard rule, end to end on the real servers: no answer — served or degraded (engine
paused, killed), or empty — ever shows a member someone they may not see; with MongoDB down
too there is no safe answer for a member, so it is 503 + Retry-After, never an unfiltered list.

The catalogue puts one profile per rule at the top of the popularity ranking, so an answer
that skipped a rule would show it (the tests check the violators do lead the unfiltered
lists, so the checks are not vacuous)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from api_support import h, proxied, serve

from opendisco import BackendError, Settings, clients
from opendisco.api import create_key
from opendisco.api._segments import CAPS
from opendisco.serving import Discovery, MemberContext
from opendisco.signals import ItemSimilarity, UserGraph, journal_dir, read_journal

V = "sv"  # a man of 30 who wants women aged 25-35
W = "sw"  # a member whose gender and age are unknown
ALLOWED_FOR_W = {"nopref"}  # the only profile stating no preference W cannot meet
#: violator -> the rule that forbids it for V
FORBIDDEN = {
    "p-sv": "self",
    "x-gender": "eligibility (V wants women)",
    "x-old": "eligibility (V wants 25-35)",
    "x-wants-women": "eligibility (she wants women)",
    "x-wants-older": "eligibility (she wants 40-60)",
    "x-hidden": "blocks (V hid her)",
    "x-blocker": "blocks (her owner blocked V)",
    "x-seen": "seen",
    "x-liked": "liked",
    "x-passed": "passed",
    "x-unavailable": "unavailable",
    "x-capped": "exposure cap",
}
GONE = "x-gone"  # turns unavailable in MongoDB while the engine is down (stale lists)
NEAR = "x-near"  # the one profile member sn may see: exposure cap 4


def _profile(pid: str, owner: str, popularity: float, **kw: Any) -> dict[str, Any]:
    doc = {
        "_id": pid,
        "kind": "profile",
        "title": f"{pid} likes jazz and hiking",
        "description": "Weekend hiking, jazz clubs and coffee.",
        "tags": ["jazz", "hiking"],
        "owner_id": owner,
        "popularity": popularity,
        "quality": 0.8,
        "available": True,
        "deleted": False,
        "gender": "f",
        "age": 30,
        "pref_genders": ["m"],
        "pref_age_min": 20,
        "pref_age_max": 45,
    }
    return {**doc, **kw}


def catalogue() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    items = [_profile(f"ok{i}", f"o-ok{i}", 10.0 + i, age=25 + i % 11) for i in range(30)]
    items.append(
        _profile(
            "nopref", "o-nopref", 500.0, pref_genders=None, pref_age_min=None, pref_age_max=None
        )
    )
    top = 2000.0
    special = {
        "p-sv": {"owner_id": V, "gender": "m", "pref_genders": ["f"], "pref_age_min": 25},
        "x-gender": {"gender": "m", "pref_genders": ["f"]},
        "x-old": {"age": 45, "pref_age_min": 25, "pref_age_max": 50},
        "x-wants-women": {"pref_genders": ["f"]},
        "x-wants-older": {"pref_age_min": 40, "pref_age_max": 60},
        "x-blocker": {"owner_id": "sb"},
        "x-unavailable": {"available": False},
        "x-capped": {"exposure_cap": 1},
    }
    for n, pid in enumerate([*FORBIDDEN, GONE]):
        extra = special.get(pid, {})
        items.append(_profile(pid, extra.pop("owner_id", f"o-{pid}"), top - n, **extra))
    # eligible for sn alone (and sn for it), capped after a few impressions
    items.append(_profile(NEAR, "o-x-near", 5.0, gender="nb", pref_genders=["nb"], exposure_cap=4))
    users = [
        {
            "_id": V,
            "profile_id": "p-sv",
            "gender": "m",
            "age": 30,
            "pref_genders": ["f"],
            "pref_age_min": 25,
            "pref_age_max": 35,
            "interests": ["jazz"],
        },
        {"_id": W, "interests": ["hiking"]},
        {"_id": "sb", "gender": "f", "age": 30, "pref_genders": ["m"]},
        {"_id": "sc", "gender": "f", "age": 31, "pref_genders": ["m"]},
        {"_id": "sn", "gender": "nb", "age": 30, "pref_genders": ["nb"]},
    ]
    return items, users


def _event(n: int, user: str, item: str, kind: str) -> dict[str, Any]:
    return {"id": f"safe-{n}", "user_id": user, "item_id": item, "type": kind}


def namespaced(api_settings: Settings, tag: str) -> Settings:
    """The API settings these tests serve with, in an index alias and database of their own
    (the fallback refreshed every second, its store reads given 3 s)."""
    return api_settings.model_copy(
        update={
            "index_alias": f"{api_settings.index_alias}-{tag}",
            "mongo_db": f"{api_settings.mongo_db}{tag}",
            "api_fallback_refresh_s": 1.0,
            "api_fallback_store_timeout_ms": 3000,
        }
    )


async def build_safe(settings: Settings, model: Any, tag: str) -> dict[str, Any]:
    """The catalogue in MongoDB, reindexed (real path), and the events that block, like,
    pass, show and cap, applied by the real event processor; keys in the same database."""
    from opendisco.ingest import Embedder, write_sample
    from opendisco.ingest._reindex import reindex

    items, users = catalogue()
    write_sample(settings, items, users)
    await reindex(settings, embedder=Embedder(settings, model=model))
    events = [
        _event(1, V, "x-hidden", "hide"),
        _event(2, "sb", "p-sv", "hide"),  # sb blocks V: V must never see sb's profile
        _event(3, V, "x-seen", "impression"),
        _event(4, V, "x-liked", "like"),
        _event(5, V, "x-passed", "pass"),
        _event(6, "sc", "x-capped", "impression"),
        _event(7, "sc", "x-capped", "impression"),
    ]
    os_client = clients.async_opensearch(settings)
    mongo = clients.mongo_async(settings)
    try:
        disc = Discovery(settings, os_client, mongo[settings.mongo_db], model=model)
        res = await disc.record_events(events)
        assert res.accepted == len(events) and not res.rejected, res
        assert "x-capped" in await disc.exposure.capped()
    finally:
        await os_client.close()
        await mongo.close()
    with clients.mongo(settings) as sync:
        keys = {
            "read": create_key(sync[settings.mongo_db], tag, ["read"])[0],
            "write": create_key(sync[settings.mongo_db], f"{tag}-w", ["write"])[0],
        }
    return {"keys": keys, "items": items}


@pytest.fixture(scope="module")
def safe_settings(api_settings: Settings) -> Settings:
    return namespaced(api_settings, "safe")


@pytest.fixture(scope="module")
async def safe(safe_settings: Settings, model: Any) -> dict[str, Any]:
    return await build_safe(safe_settings, model, "safe")


def _set_available(settings: Settings, item: str, available: bool) -> None:
    with clients.mongo(settings) as mc:
        mc[settings.mongo_db][settings.items_collection].update_one(
            {"_id": item}, {"$set": {"available": available}}
        )


READS_FOR_V = [
    f"/v1/users/{V}/recommendations?k=30",
    f"/v1/users/{V}/recommendations?k=30&surface=cold_start",
    f"/v1/users/{V}/recommendations?k=30&surface=trending",
    f"/v1/items/ok3/similar?k=30&user_id={V}",
    f"/v1/search?q=jazz%20hiking&k=30&user_id={V}",
]


def _violations(ids: list[str], extra: set[str] = frozenset()) -> dict[str, str]:  # type: ignore[assignment]
    forbidden = {**FORBIDDEN, **dict.fromkeys(extra, "unavailable (in MongoDB)")}
    return {i: forbidden[i] for i in ids if i in forbidden}


async def _get(client: Any, key: str, url: str) -> dict[str, Any]:
    resp = await client.get(url, headers=h(key))
    assert resp.status_code == 200, (url, resp.text)
    return resp.json()


async def _ready(client: Any) -> None:
    fb = client.app.state.runtime.fallback
    for _ in range(150):
        snap = fb.lists.snapshot
        if snap is not None and len(snap.lists) > 1:
            return
        await asyncio.sleep(0.1)
    raise AssertionError("the fallback lists never refreshed")


async def test_served_answers_obey_every_rule(
    safe_settings: Settings, safe: dict[str, Any]
) -> None:
    key = safe["keys"]["read"]
    async with serve(safe_settings) as client:
        for url in READS_FOR_V:
            body = await _get(client, key, url)
            ids = [it["id"] for it in body["items"]]
            assert body["degraded"] is False and body["degraded_rules"] == []
            assert ids, url
            assert not _violations(ids), (url, _violations(ids))
        body = await _get(client, key, f"/v1/users/{W}/recommendations?k=10")
        assert {it["id"] for it in body["items"]} == ALLOWED_FOR_W
        # not vacuous: without a member, the violators lead the same lists (an anonymous list
        # ranks one-sided: the reciprocal terms need a viewer — rerank._market)
        anon = await _get(client, key, "/v1/search?q=jazz%20hiking&k=30")
        shown = {it["id"] for it in anon["items"]}
        assert {"p-sv", "x-gender", "x-hidden", "x-blocker", "x-liked"} <= shown


async def test_the_engine_alone_enforces_self_and_blocks_both_ways(
    safe_settings: Settings, safe: dict[str, Any], model: Any
) -> None:
    """The in-engine parameters, with the filters stage removed (defence in depth is not
    what keeps these rules)."""
    os_client = clients.async_opensearch(safe_settings)
    mongo = clients.mongo_async(safe_settings)
    try:
        disc = Discovery(safe_settings, os_client, mongo[safe_settings.mongo_db], model=model)
        disc.parts.filters = []
        for surface in ("for_you", "cold_start", "trending"):
            recs = await disc.recommend(V, surface=surface, k=30)
            assert recs.ids and not _violations(recs.ids), (surface, _violations(recs.ids))
        plan = await disc.plan("trending", 30, user_id=V)
        cs = await disc.candidates(plan)
        assert cs.candidates and not _violations(cs.ids)
        assert plan.request.params["exclude_owners"] == ["o-x-hidden", "sb"]
        assert "p-sv" in plan.request.params["exclude_ids"]
    finally:
        await os_client.close()
        await mongo.close()


@pytest.mark.parametrize("fault", ["paused", "killed"])
async def test_degraded_answers_obey_every_rule(
    fault: str, safe_settings: Settings, safe: dict[str, Any]
) -> None:
    key = safe["keys"]["read"]
    os_proxy, _, settings = await proxied(
        safe_settings, api_deadline_ms=300, api_breaker_failures=2, api_breaker_reset_s=30.0
    )
    try:
        async with serve(settings) as client:
            await _ready(client)
            snap = client.app.state.runtime.fallback.lists.snapshot
            listed = {r.id for recs in snap.lists.values() for r in recs}
            assert set(FORBIDDEN) - {"x-unavailable", "x-capped"} <= listed  # not vacuous
            _set_available(settings, GONE, False)  # the lists still say available
            if fault == "paused":
                os_proxy.pause()
            else:
                await os_proxy.kill()
            for url in READS_FOR_V:
                body = await _get(client, key, url)
                ids = [it["id"] for it in body["items"]]
                assert body["degraded"] is True, url
                assert ids, url
                assert not _violations(ids, {GONE}), (url, _violations(ids, {GONE}))
                assert set(body["degraded_rules"]) <= {"exposure_cap"}
                if "similar" in url:
                    assert "ok3" not in ids
            body = await _get(client, key, f"/v1/users/{W}/recommendations?k=10")
            assert body["degraded"] is True
            assert {it["id"] for it in body["items"]} == ALLOWED_FOR_W
            # pages of a degraded session never repeat, and still obey
            first = await _get(client, key, f"/v1/users/{V}/recommendations?k=5")
            url = f"/v1/users/{V}/recommendations?k=5&cursor={first['next_cursor']}"
            second = await _get(client, key, url)
            a, b = [it["id"] for it in first["items"]], [it["id"] for it in second["items"]]
            assert a and b and not set(a) & set(b)
            assert not _violations(a + b, {GONE})
            # the cap list ages while the engine is away: then the answer says so
            client.app.state.runtime.fallback.lists.snapshot.capped_at = time.monotonic() - 60
            body = await _get(client, key, f"/v1/users/{V}/recommendations?k=5")
            assert body["degraded"] and body["degraded_rules"] == ["exposure_cap"]
            await os_proxy.resume()
    finally:
        _set_available(safe_settings, GONE, True)
        await os_proxy.close()


class _FailingInbox(UserGraph):
    async def inbox(self, member: str) -> Any:
        raise BackendError("user_inbox lookup failed (injected)")


async def test_a_failing_concurrent_member_read_degrades_to_a_safe_answer(
    safe_settings: Settings, safe: dict[str, Any]
) -> None:
    """The inbox is read together with the users document, state and blocks: when it fails
    (the others succeed) the request degrades exactly like any pipeline failure, to the
    fallback, whose items obey every rule for V; nothing built from a partial member context
    is served."""
    key = safe["keys"]["read"]
    async with serve(safe_settings) as client:
        await _ready(client)
        disc = client.app.state.runtime.discovery
        member = next(q for q in disc.parts.query_hydrators if isinstance(q, MemberContext))
        assert member.users is not None  # the default assembly reads the inbox with it
        member.users = _FailingInbox(disc.db)
        await _degraded_and_safe_for_v(client, key)


async def _degraded_and_safe_for_v(client: Any, key: str) -> None:
    """Every read of V is answered (200), from the fallback, non-empty, and keeps every rule."""
    for url in READS_FOR_V:
        body = await _get(client, key, url)
        ids = [it["id"] for it in body["items"]]
        assert body["degraded"] is True, url
        assert ids, url
        assert not _violations(ids), (url, _violations(ids))


class _FailingSimilarity(ItemSimilarity):
    """The item–item rows of the viewer's recent positives (one of the viewer's own feature
    lookups, which run while the candidate query does): failing, or hanging."""

    def __init__(self, db: Any, hang: bool) -> None:
        super().__init__(db)
        self.hang = hang

    async def rows(self, item_ids: Any, served: Any = None) -> Any:
        await asyncio.sleep(60 if self.hang else 0.01)
        raise BackendError("item_similarity lookup failed (injected)")


@pytest.mark.parametrize("fault", ["fails", "hangs"])
async def test_a_failing_viewer_feature_lookup_degrades_to_a_safe_answer(
    fault: str, safe_settings: Settings, safe: dict[str, Any]
) -> None:
    """The viewer's own feature lookups are started before the candidate query and run beside
    it: one failing mid-request, or hanging past the deadline, degrades the answer like any
    pipeline failure — 200, the fallback's items, every rule kept for V — and nothing it
    started is left behind as a lost exception."""
    key = safe["keys"]["read"]
    settings = safe_settings.model_copy(  # every request runs the pipeline (no open breaker)
        update={"api_deadline_ms": 1500, "api_breaker_failures": 1000}
    )
    lost: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _, ctx: lost.append(ctx))
    try:
        async with serve(settings) as client:
            await _ready(client)
            store = client.app.state.runtime.discovery.features
            saved = store.similarity
            store.similarity = _FailingSimilarity(store.db, hang=fault == "hangs")
            store.sim_rows.clear()  # V has a recent positive (x-liked): its rows are read
            try:
                await _degraded_and_safe_for_v(client, key)
            finally:
                store.similarity = saved
            for _ in range(5):  # the real lookups serve again (a busy machine may miss one)
                body = await _get(client, key, f"/v1/users/{V}/recommendations?k=10")
                if not body["degraded"]:
                    break
            assert body["degraded"] is False and body["items"]
            for _ in range(10):
                await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(None)
    assert not [c for c in lost if "injected" in repr(c)], lost


@pytest.mark.parametrize("stored", [True, False])
async def test_cold_process_with_the_engine_down_serves_safe_popular_items(
    stored: bool, safe_settings: Settings, safe: dict[str, Any]
) -> None:
    """No list refreshed yet: the most popular items MongoDB holds for V's preferences,
    filtered per member like any degraded answer. Caps are checked against the last cap list
    a process stored in MongoDB (here one that ran with the engine up); when none was ever
    stored the answer says exposure caps went unchecked (and the capped profile shows)."""
    with clients.mongo(safe_settings) as mc:
        mc[safe_settings.mongo_db][CAPS].delete_many({})
    if stored:
        async with serve(safe_settings) as client:
            await _ready(client)
    body = await _cold_recommendations(safe_settings, safe["keys"]["read"])
    ids = [it["id"] for it in body["items"]]
    assert body["degraded"] is True and ids
    assert body["template_version"] == "fallback-popular"
    if stored:
        assert not _violations(ids), _violations(ids)
        assert set(body["degraded_rules"]) <= {"exposure_cap"}
    else:
        assert body["degraded_rules"] == ["exposure_cap"]
        assert "x-capped" in ids  # not vacuous: the one rule left unchecked
        assert not _violations([i for i in ids if i != "x-capped"])


async def _cold_recommendations(settings: Settings, key: str) -> dict[str, Any]:
    """V's recommendations from a process started with the engine killed (no list yet)."""
    os_proxy, _, settings = await proxied(settings, api_deadline_ms=300)
    await os_proxy.kill()
    try:
        async with serve(settings) as client:
            return await _get(client, key, f"/v1/users/{V}/recommendations?k=20")
    finally:
        await os_proxy.close()


async def test_the_cold_fallback_serves_no_item_ingest_refuses(
    safe_settings: Settings, safe: dict[str, Any]
) -> None:
    """The most popular items MongoDB holds include the ones ingest dead-letters: one stored
    with a title that is a document was served as it is stored, and one with
    ``popularity: "lots"`` made every cold degraded answer a 503 (not a number to score)."""
    odd = {"odd-title": {"title": {"en": 1}}, "odd-pop": {"popularity": "lots"}}
    with clients.mongo(safe_settings) as mc:
        coll = mc[safe_settings.mongo_db][safe_settings.items_collection]
        base = coll.find_one({"_id": "ok0"})
        base.update(popularity=1e29, available=True)
        coll.insert_many([{**base, "_id": i, **patch} for i, patch in odd.items()])
    try:
        body = await _cold_recommendations(safe_settings, safe["keys"]["read"])
        ids = [it["id"] for it in body["items"]]
        assert body["template_version"] == "fallback-popular" and ids
        assert not set(ids) & set(odd), ids
    finally:
        with clients.mongo(safe_settings) as mc:
            mc[safe_settings.mongo_db][safe_settings.items_collection].delete_many(
                {"_id": {"$in": list(odd)}}
            )


async def test_the_fallback_counts_its_own_answers_toward_exposure_caps(
    safe_settings: Settings, safe: dict[str, Any]
) -> None:
    """The engine killed, sn (who may see x-near alone, cap 4) asks again and again: the
    impressions the degraded answers serve cannot reach the counters, yet they count — x-near
    is shown at most its cap, then nothing safe is left for sn (503), never a fifth time."""
    key = safe["keys"]["read"]
    os_proxy, _, settings = await proxied(
        safe_settings, api_deadline_ms=300, api_breaker_failures=2, api_breaker_reset_s=30.0
    )
    try:
        async with serve(settings) as client:
            await _ready(client)
            snap = client.app.state.runtime.fallback.lists.snapshot
            assert NEAR in {r.id for recs in snap.lists.values() for r in recs}
            await os_proxy.kill()
            shown, codes = 0, []
            for _ in range(8):
                resp = await client.get("/v1/users/sn/recommendations?k=5", headers=h(key))
                codes.append(resp.status_code)
                if resp.status_code == 200:
                    assert resp.json()["degraded"] is True
                    shown += NEAR in [it["id"] for it in resp.json()["items"]]
            assert 1 <= shown <= 4 and codes[-1] == 503, (shown, codes)
        # the shutdown could not write them: they stay in the served journal, for the next
        # process started here to count
        kept = Counter[str]()
        for path in journal_dir(settings).glob("*.jsonl"):
            with path.open("rb") as f:
                parts, pages = read_journal(f)
            kept += pages
            for _, counts in parts:
                kept.update(counts)
        assert kept[NEAR] >= shown, (kept[NEAR], shown)
    finally:
        await os_proxy.close()


async def test_the_fallback_counts_the_answers_served_since_its_refresh(
    safe_settings: Settings, safe: dict[str, Any], tmp_path: Path
) -> None:
    """sn is shown x-near (cap 4) twice while the engine answers — written to the counters,
    after the fallback's lists and counts were read — then the engine is killed: the
    degraded answers count those two as well, so x-near is shown at most its cap in all.
    (Counting only the impressions not written yet, they were counted nowhere: x-near was
    shown four more times, ``degraded_rules`` empty.)"""
    key = safe["keys"]["read"]
    # a host of its own: the journal the test before left (x-near's degraded impressions,
    # unwritten at its shutdown) would be adopted here and hold x-near at its cap
    os_proxy, _, settings = await proxied(
        safe_settings.model_copy(update={"state_dir": tmp_path}),
        api_deadline_ms=300,
        api_breaker_failures=2,
        api_breaker_reset_s=30.0,
    )
    try:
        async with serve(settings) as client:
            await _ready(client)
            rt = client.app.state.runtime
            snap = rt.fallback.lists.snapshot
            assert NEAR in {r.id for recs in snap.lists.values() for r in recs}
            before = (snap.counts or {}).get(NEAR, 0)
            assert before <= 2, before  # room left for two served and one degraded answer
            served = 0
            for _ in range(10):
                if served == 2:
                    break
                resp = await client.get("/v1/users/sn/recommendations?k=5", headers=h(key))
                assert resp.status_code == 200 and resp.json()["degraded"] is False
                served += NEAR in [it["id"] for it in resp.json()["items"]]
            assert served == 2
            await rt.discovery.served.drain()  # written to the counters
            assert rt.discovery.served.unwritten(NEAR) == 0
            assert rt.fallback.lists.snapshot is snap  # no refresh since
            await os_proxy.kill()
            degraded, codes = 0, []
            for _ in range(8):
                resp = await client.get("/v1/users/sn/recommendations?k=5", headers=h(key))
                codes.append(resp.status_code)
                if resp.status_code == 200:
                    assert resp.json()["degraded"] is True
                    assert resp.json()["degraded_rules"] == []  # the caps count as checked
                    degraded += NEAR in [it["id"] for it in resp.json()["items"]]
            assert before + served + degraded <= 4, (before, served, degraded, codes)
            assert degraded >= 1 and codes[-1] == 503, (degraded, codes)
    finally:
        await os_proxy.close()


async def test_an_empty_engine_answer_is_served_empty_not_replaced(
    safe_settings: Settings, safe: dict[str, Any], index_items: Any
) -> None:
    empty = safe_settings.model_copy(update={"index_alias": f"{safe_settings.index_alias}-empty"})
    await asyncio.to_thread(index_items, empty, [])
    async with serve(empty) as client:
        key = safe["keys"]["read"]
        for url in (f"/v1/users/{V}/recommendations?k=10", f"/v1/search?q=jazz&user_id={V}"):
            body = await _get(client, key, url)
            assert body["degraded"] is False and body["items"] == [], url
        resp = await client.get(f"/v1/items/ok3/similar?user_id={V}", headers=h(key))
        assert resp.status_code == 404  # the engine answered: no such item


@pytest.mark.parametrize("engine", ["up", "killed"])
async def test_mongodb_down_too_is_503_never_an_unfiltered_list(
    engine: str, safe_settings: Settings, safe: dict[str, Any]
) -> None:
    os_proxy, mongo_proxy, settings = await proxied(
        safe_settings,
        mongo=True,
        api_deadline_ms=300,
        api_fallback_store_timeout_ms=500,
        api_key_cache_s=600.0,  # the key was checked before the store went away
    )
    assert mongo_proxy is not None
    key = safe["keys"]["read"]
    try:
        async with serve(settings) as client:
            await _ready(client)
            await _get(client, key, f"/v1/users/{V}/recommendations?k=5")  # caches the key
            await mongo_proxy.kill()
            if engine == "killed":
                await os_proxy.kill()
            anonymous = ["/v1/search?q=jazz", "/v1/items/ok3/similar"]
            for url in [*READS_FOR_V, *anonymous]:
                resp = await client.get(url, headers=h(key))
                if url in anonymous and engine == "up" and resp.status_code == 200:
                    # no member: nothing MongoDB holds decides who may see what; with the
                    # features from the process's copies the engine's own answer (its hard
                    # filter and realtime cap list) is served, as with the store up
                    ids = {it["id"] for it in resp.json()["items"]}
                    assert ids and not ids & {"x-unavailable", "x-capped"}, ids
                    continue
                assert resp.status_code == 503, (url, resp.text)
                assert int(resp.headers["Retry-After"]) >= 1
                assert resp.json()["error"]["type"] == "Overloaded"
                assert "no safe degraded answer" in resp.json()["error"]["message"]
    finally:
        await os_proxy.close()
        await mongo_proxy.close()


@pytest.mark.parametrize("fault", ["killed", "paused"])
async def test_a_block_posted_while_the_engine_is_down_is_kept_both_ways(
    safe_settings: Settings, safe: dict[str, Any], fault: str
) -> None:
    """With the engine killed before the process applied any event, or paused (it accepts
    connections and never answers) under a running one, sc hides V's profile: the block is
    recorded within the events call's budget (the items' owner and kind come from MongoDB once
    the engine's lookup fails or times out; a counters index not ensured yet is ensured
    later), and the degraded answers keep it both ways at once — sc no longer sees p-sv, V's
    rules exclude sc."""
    read, write = safe["keys"]["read"], safe["keys"]["write"]
    with clients.mongo(safe_settings) as mc:  # sc's state, put back after (seen, negatives)
        sc_state = mc[safe_settings.mongo_db]["user_state"].find_one({"_id": "sc"})
    os_proxy, _, settings = await proxied(
        safe_settings, api_deadline_ms=300, api_breaker_failures=2, api_breaker_reset_s=30.0
    )
    try:
        async with serve(settings) as client:
            await _ready(client)
            if fault == "paused":  # a running process (its counters index ensured) meets a
                # hung engine: its items' lookup gives up after events_engine_timeout_s
                warm = [_event(903, "w-warm", "x-gender", "impression")]  # not sc: nothing of sc's
                resp = await client.post("/v1/events", json={"events": warm}, headers=h(write))
                assert resp.status_code == 200, resp.text
                os_proxy.pause()
            else:  # before this process applied any event (nothing ensured)
                await os_proxy.kill()
            body = await _get(client, read, "/v1/users/sc/recommendations?k=30")
            assert body["degraded"] is True and "p-sv" in [it["id"] for it in body["items"]]
            hide = [_event(901 if fault == "killed" else 902, "sc", "p-sv", "hide")]
            resp = await client.post("/v1/events", json={"events": hide}, headers=h(write))
            assert resp.status_code == 200, resp.text
            assert resp.json()["accepted"] == 1 and not resp.json()["rejected"], resp.text
            body = await _get(client, read, "/v1/users/sc/recommendations?k=30")
            assert body["degraded"] is True and "p-sv" not in [it["id"] for it in body["items"]]
            rules = await client.app.state.runtime.discovery.rules_for(V)
            assert "sc" in rules.blocked_owners
    finally:
        await os_proxy.close()
        with clients.mongo(safe_settings) as mc:  # the other tests' blocks are V's and sb's
            blocks = mc[safe_settings.mongo_db]["member_blocks"]
            blocks.update_one({"_id": V}, {"$pull": {"blocked_by": "sc"}})
            blocks.update_one({"_id": "sc"}, {"$pull": {"blocked": V}})
            states = mc[safe_settings.mongo_db]["user_state"]
            if sc_state is None:
                states.delete_one({"_id": "sc"})
            else:
                states.replace_one({"_id": "sc"}, sc_state)


async def test_a_profile_not_synced_yet_can_be_hidden_and_liked(
    safe_settings: Settings, safe: dict[str, Any], model: Any, os_client: Any
) -> None:
    """Three profiles MongoDB holds and the engine does not yet (created since the last sync):
    member sr hides one and likes another. The events were rejected as about an unknown
    item (the engine's lookup was the only one), so once the profiles were synced sr was
    shown both, and the member sr hid was shown sr. They are applied, and kept."""
    from opendisco.ingest import Embedder, sync_once

    read, write = safe["keys"]["read"], safe["keys"]["write"]
    now = datetime.now(UTC)
    new = {"p-sr": "sr", "y-hidden": "sh", "y-liked": "sl"}
    docs = [
        _profile("p-sr", "sr", 3000.0, gender="m", pref_genders=["f"], version=1),
        _profile("y-hidden", "sh", 2999.0, version=1),
        _profile("y-liked", "sl", 2998.0, version=1),
    ]
    members = [
        {"_id": "sr", "profile_id": "p-sr", "gender": "m", "age": 30, "pref_genders": ["f"]},
        {"_id": "sh", "gender": "f", "age": 30, "pref_genders": ["m"]},
        {"_id": "sl", "gender": "f", "age": 30, "pref_genders": ["m"]},
    ]
    db = clients.mongo(safe_settings)
    try:
        store = db[safe_settings.mongo_db]
        store[safe_settings.items_collection].insert_many(
            [{**d, "created_at": now, "updated_at": now} for d in docs]
        )
        store["users"].insert_many(members)
        async with serve(safe_settings) as client:
            events = [_event(911, "sr", "y-hidden", "hide"), _event(912, "sr", "y-liked", "like")]
            resp = await client.post("/v1/events", json={"events": events}, headers=h(write))
            assert resp.status_code == 200, resp.text
            assert resp.json()["accepted"] == 2 and not resp.json()["rejected"], resp.text
            report = await sync_once(safe_settings, embedder=Embedder(safe_settings, model=model))
            assert report.indexed >= len(new), report
            await asyncio.to_thread(os_client.indices.refresh, index=safe_settings.index_alias)
            body = await _get(client, read, "/v1/users/sr/recommendations?k=40")
            shown = {it["id"] for it in body["items"]}
            assert not body["degraded"] and shown, body
            assert not shown & {"y-hidden", "y-liked"}, shown
            for member, allowed in (("sh", False), ("sl", True)):  # sl: not vacuous
                body = await _get(client, read, f"/v1/users/{member}/recommendations?k=40")
                assert ("p-sr" in {it["id"] for it in body["items"]}) is allowed, (member, body)
    finally:
        store = db[safe_settings.mongo_db]
        store[safe_settings.items_collection].delete_many({"_id": {"$in": list(new)}})
        store["users"].delete_many({"_id": {"$in": [m["_id"] for m in members]}})
        store["member_blocks"].delete_many({"_id": {"$in": list(new.values())}})
        db.close()
        for pid in new:
            await asyncio.to_thread(
                os_client.delete,
                index=safe_settings.index_alias,
                id=pid,
                refresh=True,
                ignore=[404],
            )


#: rule fields MongoDB may come to hold after the last sync that ingest refuses (so the
#: engine keeps each profile's earlier fields, which admit V): an age bound holding no age, a
#: gender preference naming no gender, a kind none of the kinds, an owner that is no id, an
#: availability or deletion flag that is not a boolean
ODD_RULE_FIELDS = {
    "ok18": {"pref_age_min": "forty"},
    "ok17": {"pref_age_max": True},
    "ok16": {"pref_age_max": [40]},
    "ok15": {"pref_age_min": {"years": 40}},
    "ok0": {"pref_genders": ""},
    "ok1": {"pref_genders": [None]},
    "ok2": {"pref_genders": [1]},
    "ok3": {"pref_genders": {"g": "m"}},
    "ok4": {"deleted": 0},
    "ok5": {"deleted": ""},
    "ok6": {"deleted": []},
    "ok7": {"deleted": {}},
    "ok12": {"kind": None, "gender": "m"},  # no kind: still a profile V does not want
    "ok13": {"kind": "Profile", "gender": "m"},
    "ok14": {"owner_id": ["o-ok14"]},  # whose it is cannot be read: not confirmed unblocked
    "ok19": {"available": "false"},
    "ok20": {"available": "no"},
    "ok21": {"available": "0"},
    "ok22": {"available": 0},
    "ok23": {"available": [True]},
    "ok24": {"available": "true"},
    "ok25": {"owner_id": 4244},  # blocked by V as a number
    "ok27": {"pref_age_min": 30.5},  # a fraction is no age (read as 30, it admitted V, 30)
    "ok28": {"age": 35.5},  # V wants 25-35 (read as 35, V was shown her)
}
#: V's blocks and state as another writer may store them: one id as a plain string (each
#: was read character by character: the block of sb, who blocked V, was lost)
ODD_MEMBER_DOCS = {
    "member_blocks": {"blocked": ["o-ok8", 4244], "blocked_by": "sb"},
    "user_state": {"seen": "ok9", "blocked": "ok10", "liked": "ok11"},
}
#: W's own preferences stated but unreadable, one at a time
ODD_FOR_W = [{"pref_age_max": "old"}, {"pref_genders": ""}, {"pref_genders": [None]}]


async def test_stored_rule_fields_ingest_would_refuse_fail_closed(
    safe_settings: Settings, safe: dict[str, Any]
) -> None:
    """Rule fields stated in MongoDB but unreadable (what ingest refuses: the engine's copy
    still admits V) exclude, served (the page's re-check) and degraded (the fallback's
    re-read): a profile whose age bound holds no age (a word, a boolean, a list, a document,
    a fraction), whose own age is a fraction or whose gender preference names no gender
    admits nobody, W's own such preference admits no profile; a kind none of the kinds is a
    profile; availability and deletion flags other than true and false hide the profile; one
    id stored as a plain string or a number in V's blocks or state is that id. (Read
    leniently, V was shown every one of them.)"""
    read = safe["keys"]["read"]
    odd_items = set(ODD_RULE_FIELDS)
    odd_ids = {"ok8", "ok9", "ok10", "ok11", "x-blocker"}
    url = f"/v1/users/{V}/recommendations?k=45"
    os_proxy, _, settings = await proxied(
        safe_settings, api_deadline_ms=300, api_breaker_failures=2, api_breaker_reset_s=30.0
    )
    mc = clients.mongo(safe_settings)
    db = mc[safe_settings.mongo_db]
    items = db[safe_settings.items_collection]
    saved = {d["_id"]: d for d in items.find({"_id": {"$in": sorted(odd_items)}})}
    docs = {c: db[c].find_one({"_id": V}) for c in ODD_MEMBER_DOCS}
    try:
        async with serve(settings) as client:
            await _ready(client)
            shown = {it["id"] for it in (await _get(client, read, url))["items"]}
            assert odd_items | (odd_ids - {"x-blocker"}) <= shown  # not vacuous
            for pid, fields in ODD_RULE_FIELDS.items():
                items.update_one({"_id": pid}, {"$set": fields})
            for coll, fields in ODD_MEMBER_DOCS.items():
                db[coll].update_one({"_id": V}, {"$set": fields})
            for degraded in (False, True):
                if degraded:
                    os_proxy.pause()
                body = await _get(client, read, url)
                ids = [it["id"] for it in body["items"]]
                assert body["degraded"] is degraded and ids, body
                bad = set(ids) & (odd_items | odd_ids)
                assert not bad, (degraded, sorted(bad))
                for fields in ODD_FOR_W:
                    db["users"].replace_one(
                        {"_id": W}, {"_id": W, "interests": ["hiking"], **fields}
                    )
                    resp = await client.get(f"/v1/users/{W}/recommendations?k=10", headers=h(read))
                    # nobody (the engine's parameters admit no profile): an empty answer,
                    # degraded too (it was a 503: no safe answer, retried for nothing)
                    assert resp.status_code == 200, (fields, resp.text)
                    assert resp.json()["items"] == [], (fields, resp.text)
                    assert resp.json()["degraded"] is degraded, (fields, resp.text)
            # blocks that hold no ids: no list that skipped them (the fallback's read fails)
            db["member_blocks"].update_one({"_id": V}, {"$set": {"blocked_by": {"sb": 1}}})
            resp = await client.get(url, headers=h(read))
            assert resp.status_code == 503 and "Retry-After" in resp.headers, resp.text
            assert "sb" not in resp.text, resp.text  # who blocked V: never told (it was)
            await os_proxy.resume()
            # a writer reads what it cannot read as every id found in it (blocks more, never
            # less) and rewrites it clean: V's hide lands both ways (it was a 503 for ever,
            # and o-ok26 went on seeing V)
            hide = [_event(941, V, "ok26", "hide")]
            write = safe["keys"]["write"]
            resp = await client.post("/v1/events", json={"events": hide}, headers=h(write))
            assert resp.status_code == 200 and resp.json()["accepted"] == 1, resp.text
            stored = db["member_blocks"].find_one({"_id": V})
            assert "sb" in stored["blocked_by"] and "o-ok26" in stored["blocked"], stored
            assert V in db["member_blocks"].find_one({"_id": "o-ok26"})["blocked_by"]
    finally:
        for doc in saved.values():
            items.replace_one({"_id": doc["_id"]}, doc)
        for coll, doc in docs.items():
            db[coll].replace_one({"_id": V}, doc)
        db["member_blocks"].delete_one({"_id": "o-ok26"})
        db["events"].delete_one({"_id": "safe-941"})
        db["users"].replace_one({"_id": W}, {"_id": W, "interests": ["hiking"]})
        mc.close()
        await os_proxy.close()


#: profile edits the app makes in MongoDB (valid ones, which sync would index) after which V
#: (a man of 30 who wants women aged 25-35) may not see the profile: her preferences narrowed
#: (to the boundary's other side), inverted or naming a gender nobody has; her own age or
#: gender left V's range; paused, deleted, passed to a member who blocked V, or to V
PROFILE_EDITS = {
    "ok0": {"pref_genders": ["f"]},
    "ok1": {"pref_age_min": 31},
    "ok2": {"pref_age_max": 29},
    "ok3": {"pref_age_min": 40, "pref_age_max": 20},
    "ok4": {"pref_genders": ["x-unknown"]},
    "ok5": {"age": 36},
    "ok6": {"gender": "nb"},
    "ok7": {"available": False},
    "ok8": {"deleted": True},
    "ok9": {"owner_id": "sb"},
    "ok10": {"owner_id": V},
}
HARD_DELETED = "ok11"
#: edits after which V still may: bounds at V's age, no preference, an unknown gender beside
#: V's, no location
STILL_ELIGIBLE = {
    "ok12": {"pref_age_min": 30, "pref_age_max": 30},
    "ok13": {"pref_genders": []},
    "ok14": {"pref_genders": ["m", "x-unknown"]},
    "ok15": {"location": None},
}


async def test_profile_edits_not_synced_yet_hold_in_the_next_answer(
    safe_settings: Settings, safe: dict[str, Any]
) -> None:
    """A profile edited in MongoDB (no sync since: the engine still admits V) is shown to V
    on the rules as the store has them in the very next answer: served (for_you and its next
    cursor page, search) and degraded (the fallback's lists still hold it)."""
    read = safe["keys"]["read"]
    edited = {*PROFILE_EDITS, HARD_DELETED}
    urls = [f"/v1/users/{V}/recommendations?k=40", f"/v1/search?q=jazz%20hiking&k=40&user_id={V}"]
    # a deadline a loaded machine's served answers meet (300 ms degraded them under load 10)
    os_proxy, _, settings = await proxied(
        safe_settings, api_deadline_ms=1500, api_breaker_failures=2, api_breaker_reset_s=30.0
    )
    mc = clients.mongo(safe_settings)
    items = mc[safe_settings.mongo_db][safe_settings.items_collection]
    changed = [*edited, *STILL_ELIGIBLE]
    saved = list(items.find({"_id": {"$in": changed}}))
    try:
        async with serve(settings) as client:
            await _ready(client)
            shown = {it["id"] for it in (await _get(client, read, urls[0]))["items"]}
            assert set(changed) <= shown  # not vacuous
            for pid, fields in {**PROFILE_EDITS, **STILL_ELIGIBLE}.items():
                items.update_one({"_id": pid}, {"$set": fields})
            items.delete_one({"_id": HARD_DELETED})
            for degraded in (False, True):
                if degraded:
                    os_proxy.pause()
                for url in urls:
                    body = await _get(client, read, url)
                    ids = {it["id"] for it in body["items"]}
                    assert body["degraded"] is degraded and ids, (url, body)
                    assert not ids & edited, (degraded, url, sorted(ids & edited))
                    if not degraded and "recommendations" in url:
                        assert set(STILL_ELIGIBLE) <= ids, sorted(set(STILL_ELIGIBLE) - ids)
                # a session's pages
                page = f"/v1/users/{V}/recommendations?k=8"
                first = await _get(client, read, page)
                second = await _get(client, read, f"{page}&cursor={first['next_cursor']}")
                ids = {it["id"] for it in first["items"] + second["items"]}
                assert len(ids) == 16 and not ids & edited, (degraded, sorted(ids & edited))
            await os_proxy.resume()
    finally:
        for doc in saved:
            items.replace_one({"_id": doc["_id"]}, doc, upsert=True)
        mc.close()
        await os_proxy.close()


async def test_a_reused_event_id_does_not_tell_another_members_event(
    safe_settings: Settings, safe: dict[str, Any]
) -> None:
    """``safe-2`` is sb's hide of V's profile (sb blocked V). A post of that id about another
    member is rejected without naming sb, V's profile or the hide (it said
    ``('hide', 'sb', 'p-sv')``); the member's own reuse still names what the id is."""
    write = safe["keys"]["write"]
    async with serve(safe_settings) as client:
        for user, shown in (("sc", False), ("sb", True)):
            ev = {"id": "safe-2", "user_id": user, "item_id": "ok1", "type": "like"}
            resp = await client.post("/v1/events", json={"events": [ev]}, headers=h(write))
            assert resp.status_code == 200, resp.text
            [rejected] = resp.json()["rejected"]
            reason = rejected["reason"]
            assert ("p-sv" in reason and "hide" in reason) is shown, (user, reason)
            assert ("'sb'" in reason) is shown, (user, reason)


async def test_no_v1_answer_may_be_kept_by_a_cache(
    safe_settings: Settings, safe: dict[str, Any]
) -> None:
    """A list is one member's, under the rules as they stand at the request: an HTTP cache in
    front of the API must not keep it (it had no Cache-Control: a shared cache may serve a
    stored list after a block), nor an error."""
    read = safe["keys"]["read"]
    async with serve(safe_settings) as client:
        for url in (*READS_FOR_V, "/v1/users/nobody-x/recommendations?k=0"):
            resp = await client.get(url, headers=h(read))
            assert resp.headers.get("cache-control") == "no-store", (url, resp.status_code)
        assert "no-store" not in (await client.get("/healthz")).headers.get("cache-control", "")


async def test_a_hide_with_the_engine_down_blocks_the_member_of_an_odd_profile(
    safe_settings: Settings, safe: dict[str, Any]
) -> None:
    """The engine killed, a hide's item is read from MongoDB, which may hold what ingest
    refuses: ok27's kind stored as ``"Profile"`` (the engine's copy: a profile), ok28's owner
    as the number 4243. Both hides block the member both ways (the kind was read as no
    profile: ok27's member was not blocked, and went on seeing sz)."""
    write = safe["keys"]["write"]
    odd = {"ok27": {"kind": "Profile"}, "ok28": {"owner_id": 4243}}
    mc = clients.mongo(safe_settings)
    db = mc[safe_settings.mongo_db]
    items = db[safe_settings.items_collection]
    saved = {d["_id"]: d for d in items.find({"_id": {"$in": sorted(odd)}})}
    os_proxy, _, settings = await proxied(safe_settings)
    try:
        for pid, fields in odd.items():
            items.update_one({"_id": pid}, {"$set": fields})
        async with serve(settings) as client:
            await os_proxy.kill()
            hides = [_event(931, "sz", "ok27", "hide"), _event(932, "sz", "ok28", "hide")]
            resp = await client.post("/v1/events", json={"events": hides}, headers=h(write))
            assert resp.status_code == 200, resp.text
            assert resp.json()["accepted"] == 2, resp.text
            rules = await client.app.state.runtime.discovery.rules_for("sz")
            assert {"o-ok27", "4243"} <= rules.blocked_owners, rules.blocked_owners
            for member in ("o-ok27", "4243"):  # and the other way
                assert (
                    "sz"
                    in (await client.app.state.runtime.discovery.rules_for(member)).blocked_owners
                )
    finally:
        await os_proxy.close()
        for doc in saved.values():
            items.replace_one({"_id": doc["_id"]}, doc)
        db["member_blocks"].delete_many({"_id": {"$in": ["sz", "o-ok27", "4243"]}})
        db["user_state"].delete_one({"_id": "sz"})
        mc.close()


@pytest.mark.parametrize("degraded", [False, True], ids=["served", "degraded"])
async def test_a_member_without_a_users_document_is_shown_nobody(
    degraded: bool, safe_settings: Settings, safe: dict[str, Any]
) -> None:
    """A member whose ``users`` document was deleted (``sc``: their state, likes and blocks
    are still stored) or never written (``ghost``) asks for recommendations: whom they want
    cannot be confirmed, so no profile is shown — not even one stating no preference (before,
    ``nopref`` was shown to both, served and degraded, on every surface): an empty answer,
    degraded too (not a 503: there is nobody to retry for)."""
    key = safe["keys"]["read"]
    urls = [
        "/v1/users/{u}/recommendations?k=30",
        "/v1/users/{u}/recommendations?k=30&surface=trending",
        "/v1/items/ok3/similar?k=30&user_id={u}",
    ]
    os_proxy, _, settings = await proxied(
        safe_settings, api_deadline_ms=1500, api_breaker_failures=2, api_breaker_reset_s=30.0
    )
    mc = clients.mongo(safe_settings)
    users = mc[safe_settings.mongo_db]["users"]
    saved = users.find_one({"_id": "sc"})
    try:
        async with serve(settings) as client:
            await _ready(client)
            assert "nopref" in {  # not vacuous: a member stating nothing sees it
                it["id"] for it in (await _get(client, key, urls[0].format(u=W)))["items"]
            }
            users.delete_one({"_id": "sc"})
            if degraded:
                os_proxy.pause()
            for user in ("sc", "ghost"):
                for url in urls:
                    resp = await client.get(url.format(u=user), headers=h(key))
                    assert resp.status_code == 200, (user, url, resp.text)
                    body = resp.json()
                    assert body["degraded"] is degraded, (user, url, body)
                    assert body["items"] == [], (user, url, [i["id"] for i in body["items"]])
            await os_proxy.resume()
    finally:
        users.replace_one({"_id": "sc"}, saved, upsert=True)
        mc.close()
        await os_proxy.close()
