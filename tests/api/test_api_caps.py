"""Exposure caps within one flush period, on the real servers through the API: an item with a
small ``exposure_cap`` that many members ask for, one after another or all at once, is served
at most its cap in all (the counters' impressions plus this process's answers).

The served impressions are flushed only at the end (``exposure_flush_s`` 60 s), so the
engine's cap list never changes while the members ask: what keeps the cap is the process's
own count (``serving._caps``). Without it each member was shown the item (the cap list
changes only with a flush); with the count taken when the API answers instead of when the
page is picked, the requests in flight at once were all shown it too."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from api_support import h, proxied, serve
from http_faults import FaultyHttpProxy
from test_api_safety import _ready, namespaced

from opendisco import Settings, clients
from opendisco.api import create_key
from opendisco.api._segments import load_caps
from opendisco.serving import Discovery

CAP = 3
COUNTED = 2  # impressions in the counters before the members ask: room for one more
MEMBERS = 10
#: the capped item of each test, and the gender its members and it want (nobody else's)
GROUPS = {
    "seq": ("cap-seq", "g-seq"),
    "conc": ("cap-conc", "g-conc"),
    "deg": ("cap-deg", "g-deg"),
    "tpl": ("cap-tpl", "g-tpl"),
    "cold": ("cap-cold", "g-cold"),
    "list": ("cap-list", "g-list"),
    "low": ("cap-low", "g-low"),
    "deglow": ("cap-deglow", "g-deglow"),
}
#: the groups whose item the engine indexed with another cap (None: none, the default) than
#: the ``CAP`` the app then sets in MongoDB only (no sync writes it to the engine)
LOWERED = {"low": 100, "deglow": None}


def _profile(pid: str, gender: str, popularity: float, **kw: Any) -> dict[str, Any]:
    return {
        "_id": pid,
        "kind": "profile",
        "title": f"{pid} likes jazz and hiking",
        "description": "Weekend hiking, jazz clubs and coffee.",
        "tags": ["jazz", "hiking"],
        "owner_id": f"o-{pid}",
        "popularity": popularity,
        "quality": 0.8,
        "available": True,
        "deleted": False,
        "gender": gender,
        "age": 30,
        "pref_genders": [gender],
        "pref_age_min": 20,
        "pref_age_max": 45,
        **kw,
    }


def catalogue() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    items, users = [], []
    for tag, (capped, gender) in GROUPS.items():
        items.append(_profile(capped, gender, 1000.0, exposure_cap=LOWERED.get(tag, CAP)))
        items += [_profile(f"fill-{tag}{i}", gender, 10.0 + i) for i in range(3)]
        users += [
            {"_id": f"{tag}{i}", "gender": gender, "age": 30, "pref_genders": [gender]}
            for i in range(MEMBERS)
        ]
    return items, users


@pytest.fixture(scope="module")
def caps_settings(api_settings: Settings) -> Settings:
    return namespaced(api_settings, "capgap").model_copy(
        update={"exposure_flush_s": 60.0, "signal_copies_s": 0.5}
    )


@pytest.fixture(scope="module")
async def caps_catalogue(caps_settings: Settings, model: Any) -> dict[str, Any]:
    """The catalogue reindexed (real path); each capped item at ``COUNTED`` impressions in
    the engine's counters (not capped there); keys in the same database."""
    from opendisco.ingest import Embedder, write_sample
    from opendisco.ingest._reindex import reindex

    items, users = catalogue()
    write_sample(caps_settings, items, users)
    await reindex(caps_settings, embedder=Embedder(caps_settings, model=model))
    os_client = clients.async_opensearch(caps_settings)
    mongo = clients.mongo_async(caps_settings)
    try:
        disc = Discovery(caps_settings, os_client, mongo[caps_settings.mongo_db], model=model)
        await disc.ensure()
        capped = await disc.exposure.record({c: COUNTED for c, _ in GROUPS.values()})
        assert not set(capped) & {c for c, _ in GROUPS.values()}
    finally:
        await os_client.close()
        await mongo.close()
    with clients.mongo(caps_settings) as sync:
        db = sync[caps_settings.mongo_db]
        keys = {"read": create_key(db, "caps", ["read"])[0]}
        keys["admin"] = create_key(db, "caps-admin", ["admin"])[0]
    return {"keys": keys}


async def _copy_read(client: Any, item: str) -> None:
    """Wait until the process's copy of the counters holds ``item``'s impressions."""
    mirror = client.app.state.runtime.discovery.copies.exposure
    for _ in range(200):
        if mirror.fresh() and (await mirror.read([item]))[item].count == COUNTED:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the copy of the counters was never read")


def _lower_in_store(settings: Settings, tag: str) -> None:
    """The app sets the item's ``exposure_cap`` to ``CAP`` in MongoDB; no sync runs, the
    engine's copy keeps the cap it indexed (``LOWERED``)."""
    if tag in LOWERED:
        with clients.mongo(settings) as sync:
            items = sync[settings.mongo_db][settings.items_collection]
            got = items.update_one({"_id": GROUPS[tag][0]}, {"$set": {"exposure_cap": CAP}})
            assert got.matched_count == 1


async def _shown(client: Any, key: str, member: str, item: str) -> bool:
    resp = await client.get(f"/v1/users/{member}/recommendations?k=10", headers=h(key))
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["degraded"] is False
    ids = [it["id"] for it in body["items"]]
    assert ids, member  # the fillers are always eligible: not vacuous
    return item in ids


@pytest.mark.parametrize("tag", ["seq", "low"])
async def test_members_one_after_another_see_an_item_at_most_its_cap(
    caps_settings: Settings, caps_catalogue: dict[str, Any], tag: str
) -> None:
    """``low``: the engine indexed the item with cap 100, the app lowered it to 3 in MongoDB
    only. The page's re-check reads the stored cap with the rule fields and the page is
    checked against it (checked against the hit's 100, 10 of 10 members were shown it for as
    long as sync did not write the new cap)."""
    capped, _ = GROUPS[tag]
    keys = caps_catalogue["keys"]
    _lower_in_store(caps_settings, tag)
    async with serve(caps_settings) as client:
        rt = client.app.state.runtime
        await _copy_read(client, capped)
        shown = [await _shown(client, keys["read"], f"{tag}{i}", capped) for i in range(MEMBERS)]
        assert sum(shown) == CAP - COUNTED, shown
        assert shown[0]  # room for one: the first member saw it
        assert capped not in await rt.discovery.exposure.capped()  # nothing flushed yet
        # the next member's answer leaves it out under the cap rule, named in the explain
        url = f"/v1/users/{tag}0/recommendations?k=10&explain=true"
        resp = await client.get(url, headers=h(keys["admin"]))
        body = resp.json()
        assert capped not in [it["id"] for it in body["items"]]
        assert body["explain"]["filtered"].get("exposure_cap", 0) >= 1, body["explain"]


class _Together:
    """The page re-check (the real MongoDB read), each held until every request has read
    once: the page picks then resume in one turn of the event loop — the moment two requests
    in flight could both take an item's last impression."""

    def __init__(self, recheck: Any, n: int) -> None:
        self.recheck, self.n, self.arrived = recheck, n, 0
        self.all = asyncio.Event()

    async def __call__(self, rules: Any, ids: list[str]) -> Any:
        got = await self.recheck(rules, ids)
        self.arrived += 1
        if self.arrived >= self.n:
            self.all.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.all.wait(), 3.0)
        return got


async def test_members_all_at_once_see_an_item_at_most_its_cap(
    caps_settings: Settings, caps_catalogue: dict[str, Any]
) -> None:
    """Ten requests in flight at once, their page picks resuming together: one takes the
    item's last impression, the others leave it out. (Checked only at the filters stage, all
    ten showed it; counted when the API answers rather than at the pick, too.)"""
    capped, _ = GROUPS["conc"]
    key = caps_catalogue["keys"]["read"]
    async with serve(caps_settings) as client:
        disc = client.app.state.runtime.discovery
        disc.recheck = _Together(disc.recheck, MEMBERS)
        await _copy_read(client, capped)
        asks = [_shown(client, key, f"conc{i}", capped) for i in range(MEMBERS)]
        shown = await asyncio.gather(*asks)
        assert sum(shown) == CAP - COUNTED, shown


@pytest.mark.parametrize("tag", ["deg", "deglow"])
async def test_degraded_answers_all_at_once_show_an_item_at_most_its_cap(
    caps_settings: Settings, caps_catalogue: dict[str, Any], tag: str
) -> None:
    """The engine killed, ten members ask at once: the fallback's answers count toward the
    cap too, each checked and counted once it is picked. (Checked only before the answer's
    store reads and counted when the API answered, all ten showed it.) ``deglow``: indexed
    with no cap (the default, 200), set to 3 in MongoDB only; the fallback's re-read of the
    items carries the stored cap (checked against the lists' copy, 10 of 10)."""
    capped, _ = GROUPS[tag]
    _lower_in_store(caps_settings, tag)
    key = caps_catalogue["keys"]["read"]
    os_proxy, _, settings = await proxied(
        caps_settings, api_deadline_ms=300, api_breaker_failures=2, api_breaker_reset_s=30.0
    )
    try:
        async with serve(settings) as client:
            await _ready(client)
            lists = client.app.state.runtime.fallback.lists
            for _ in range(100):  # a refresh that read the item's impressions
                if (lists.snapshot.counts or {}).get(capped) == COUNTED:
                    break
                await asyncio.sleep(0.1)
            assert (lists.snapshot.counts or {}).get(capped) == COUNTED
            await os_proxy.kill()
            url = f"/v1/users/{tag}{{}}/recommendations?k=10"
            resps = await asyncio.gather(
                *(client.get(url.format(i), headers=h(key)) for i in range(MEMBERS))
            )
            bodies = [r.json() for r in resps if r.status_code == 200]
            assert len(bodies) == MEMBERS and all(b["degraded"] for b in bodies)
            shown = [capped in [it["id"] for it in b["items"]] for b in bodies]
            assert sum(shown) == CAP - COUNTED, shown
    finally:
        await os_proxy.close()


def _trimmed(surface: str) -> Any:
    """The shipped template of ``surface`` whose hits carry only what its author listed (a
    template version or an arm's file may trim ``_source``): no ``exposure_cap``."""
    import json

    from opendisco.ingest import PACKED_FIELD
    from opendisco.queries import load, template_from_doc

    raw = json.loads(json.dumps(load(surface).raw))
    for source in raw["sources"].values():
        source["body"]["_source"] = {"includes": ["title", "tags", "popularity", PACKED_FIELD]}
    return template_from_doc(surface, raw, label="trimmed")


async def test_a_template_that_trims_source_keeps_the_items_own_cap(
    caps_settings: Settings, caps_catalogue: dict[str, Any], model: Any
) -> None:
    """An experiment arm's or a promoted template version's ``_source`` without
    ``exposure_cap``: the check read the hit's field, found none, and applied
    ``exposure_default_cap`` (200) — the item with its own cap 3 went to every member."""
    from opendisco.serving import Artifacts

    capped, _ = GROUPS["tpl"]
    key = caps_catalogue["keys"]["read"]
    os_client = clients.async_opensearch(caps_settings)
    mongo = clients.mongo_async(caps_settings)
    templates = {s: _trimmed(s) for s in ("for_you", "cold_start")}
    disc = Discovery(
        caps_settings,
        os_client,
        mongo[caps_settings.mongo_db],
        model=model,
        artifacts=Artifacts(templates=templates),
    )
    try:
        async with serve(caps_settings, disc) as client:
            await _copy_read(client, capped)
            shown = [await _shown(client, key, f"tpl{i}", capped) for i in range(MEMBERS)]
            assert sum(shown) == CAP - COUNTED, shown
    finally:
        await os_client.close()
        await mongo.close()


async def test_a_process_started_with_the_engine_down_counts_its_degraded_answers(
    caps_settings: Settings, caps_catalogue: dict[str, Any]
) -> None:
    """The engine down since start-up: no list refreshed, no counts read, the answers are the
    most popular items MongoDB holds. The counters cannot be read, but this process's own
    answers count (as on the served path without a copy): the item is shown at most its cap
    by this process. (With no snapshot counts the fallback counted nothing: 10 of 10.)"""
    capped, _ = GROUPS["cold"]
    key = caps_catalogue["keys"]["read"]
    os_proxy, _, settings = await proxied(
        caps_settings, api_deadline_ms=300, api_breaker_failures=2, api_breaker_reset_s=30.0
    )
    await os_proxy.kill()
    try:
        async with serve(settings) as client:
            url = "/v1/users/cold{}/recommendations?k=10"
            resps = await asyncio.gather(
                *(client.get(url.format(i), headers=h(key)) for i in range(MEMBERS))
            )
            bodies = [r.json() for r in resps if r.status_code == 200]
            assert len(bodies) == MEMBERS, [r.text for r in resps]
            assert all(b["template_version"] == "fallback-popular" for b in bodies)
            shown = [capped in [it["id"] for it in b["items"]] for b in bodies]
            assert sum(shown) == CAP, shown  # its own impressions alone: the counters unread
    finally:
        await os_proxy.close()


async def test_an_item_whose_cap_list_update_failed_stays_out_without_a_copy(
    caps_settings: Settings, caps_catalogue: dict[str, Any]
) -> None:
    """No copy of the counters (``signal_copies_s`` 0: as above ``signal_copies_max_items``).
    A member is shown the item's last impression; the flush writes it (the counters hold the
    cap) but the cap-list update is refused (a 429 storm on ``_update/_capped``), so the
    engine's list does not have it. Once the process's own written impressions are older than
    a read could miss (``visible_s``), nothing else in it remembered them: the next members
    were shown the item past its cap. The store keeps the ids whose list update failed
    (``ExposureStore.known_capped``) and the cap check counts them at their cap."""
    capped, _ = GROUPS["list"]
    key = caps_catalogue["keys"]["read"]
    with FaultyHttpProxy(caps_settings.opensearch_url, statuses=(429,)) as proxy:
        settings = caps_settings.model_copy(
            update={"opensearch_url": proxy.url, "signal_copies_s": 0.0}
        )
        async with serve(settings) as client:
            disc = client.app.state.runtime.discovery
            assert await _shown(client, key, "list0", capped)  # 2 counted: room for one
            proxy.fail_if = lambda method, path: path.endswith("/_update/_capped")
            await disc.served.flush(pace=False)  # the counts are written, the list is not
            assert proxy.answered.get(429, 0) >= 1
            assert (await disc.exposure.counts([capped]))[capped] == CAP
            assert capped not in await disc.exposure.capped()
            await asyncio.sleep(disc.served.visible_s + 0.5)  # its own impressions forgotten
            assert disc.served.unwritten(capped) == 0
            shown = [await _shown(client, key, f"list{i}", capped) for i in range(1, MEMBERS)]
            assert not any(shown), shown
            proxy.fail_if = None


@contextlib.asynccontextmanager
async def _fallback_behind_a_proxy(
    settings: Settings,
) -> AsyncIterator[tuple[FaultyHttpProxy, Settings, Any, Discovery]]:
    """``(proxy, settings, fallback lists, discovery)`` of an API served through a fault proxy."""
    with FaultyHttpProxy(settings.opensearch_url) as proxy:
        through = settings.model_copy(update={"opensearch_url": proxy.url})
        async with serve(through) as client:
            await _ready(client)
            rt = client.app.state.runtime
            yield proxy, through, rt.fallback.lists, rt.discovery


async def test_a_cap_list_a_lagging_node_says_has_no_index_is_not_read_as_empty(
    caps_settings: Settings, caps_catalogue: dict[str, Any]
) -> None:
    """A node behind on the cluster state answers the GET of the cap list 404
    ``index_not_found_exception``: read as "no list yet", the fallback's refresh replaced its
    cap list with an empty one and stored it for the other processes, whose degraded answers
    then showed members past their cap (every time). The older list is kept, as on any
    failed read."""
    item = "lagcap-x"  # no such item: its cap is the default
    async with _fallback_behind_a_proxy(caps_settings) as (proxy, settings, lists, disc):
        assert item in await disc.exposure.record({item: settings.exposure_default_cap})
        await lists.refresh()
        assert item in (lists.snapshot.capped or ())
        proxy.missing_if = lambda method, path: path.endswith("/_doc/_capped")
        await lists.refresh()
        assert proxy.answered.get(404, 0) >= 1
        assert item in (lists.snapshot.capped or ())
        stored = await load_caps(disc.db, settings.index_alias)
        assert stored is not None and item in stored[0]


async def test_counts_a_lagging_node_says_have_no_index_are_not_read_as_zero(
    caps_settings: Settings, caps_catalogue: dict[str, Any]
) -> None:
    """A node behind on the cluster state answers the fallback's read of the listed items'
    counters 404 ``index_not_found_exception``: read as no impressions, the refresh replaced
    the counts it checks caps by (those not on the cap list yet) with none. The older counts
    are kept, as on any failed read."""
    async with _fallback_behind_a_proxy(caps_settings) as (proxy, _, lists, disc):
        await lists.refresh()
        assert lists.snapshot is not None
        # the fillers only: the groups' capped items keep their counts for the other tests
        listed = {r.id for recs in lists.snapshot.lists.values() for r in recs}
        listed = {i for i in listed if i.startswith("fill-")}
        await disc.exposure.record(dict.fromkeys(sorted(listed), 1))
        await disc.os.indices.refresh(index=disc.exposure.index)  # searchable counts
        await lists.refresh()
        seen = lists.snapshot.counts
        assert seen, seen  # the listed items' impressions
        counters = f"/{disc.exposure.index}/"
        proxy.missing_if = lambda method, path: counters in path and "_search" in path
        await lists.refresh()
        assert proxy.answered.get(404, 0) >= 1
        assert lists.snapshot.counts == seen
