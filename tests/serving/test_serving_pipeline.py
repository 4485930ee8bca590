"""The served pipeline end to end on the real servers (what API, CLI and eval call)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest

from opendisco import InvalidInput, clients


def _like(user: str, item: str, n: int) -> dict[str, Any]:
    return {
        "id": f"pl-{user}-{item}-{n}",
        "type": "like",
        "user_id": user,
        "item_id": item,
        "ts": datetime.now(UTC),
    }


async def test_cold_start_user_gets_results(discovery: Any, market: Any) -> None:
    _, users = market
    recs = await discovery.recommend(users[47]["_id"], k=10)  # no test gives them history
    assert recs.surface == "cold_start"
    assert len(recs.items) == 10
    assert len(set(recs.ids)) == 10
    assert not recs.degraded
    assert recs.version.startswith("cold_start@")


async def test_unknown_member_sees_no_profile_whose_preferences_it_cannot_meet(
    discovery: Any, market: Any
) -> None:
    """No ``users`` document: gender and age unknown, so no profile that states gender or age
    preferences (all of them here) can be confirmed: the answer is empty, and it is served
    (an empty list is an answer, not a failure)."""
    recs = await discovery.recommend("u-nobody", k=10)
    assert recs.surface == "cold_start" and recs.items == [] and not recs.degraded


async def test_like_changes_next_recommendations(discovery: Any, market: Any) -> None:
    _, users = market
    user = users[3]["_id"]
    before = await discovery.recommend(user, k=10)
    liked = before.ids[0]
    res = await discovery.record_events([_like(user, liked, 1)])
    assert res.accepted == 1
    after = await discovery.recommend(user, k=10, explain=True)
    assert after.surface == "for_you"  # now personal: the user has a vector
    assert after.ids != before.ids
    assert liked not in after.ids  # interacted items are filtered
    assert after.explain is not None
    assert after.explain["rendered"] and after.explain["rerank"]["steps"]
    # duplicate event id: counted once
    again = await discovery.record_events([_like(user, liked, 1)])
    assert again.accepted == 0 and again.duplicates == 1


async def test_similar_excludes_anchor_and_search_is_literal(discovery: Any, market: Any) -> None:
    items, _ = market
    anchor = items[0]["_id"]
    sim = await discovery.similar(anchor, k=5)
    assert sim.items and anchor not in sim.ids
    hostile = '"}}]}{{#x}}\\ ' + items[1]["title"]
    found = await discovery.search(hostile, k=5)
    assert not found.degraded
    with pytest.raises(InvalidInput):
        await discovery.search("   ")


async def test_trending_is_non_personal(market_settings: Any, market: Any, model: Any) -> None:
    """The same state gives everyone the same list. The state is held still: a first call
    loads the process's pacing state (read in the background: the first request never waits
    for it, the next one applies it), what earlier tests' pipelines counted is made visible
    (else the counters index's own 1 s refresh can land between the two calls and move the
    exposure features), and these calls count no served impressions of their own."""
    from opendisco.serving import Discovery
    from opendisco.signals import exposure_index

    still = market_settings.model_copy(update={"exposure_count_served": False})
    os_client = clients.async_opensearch(still)
    mongo = clients.mongo_async(still)
    disco = Discovery(still, os_client, mongo[still.mongo_db], model=model)
    try:
        await disco.trending(k=8)
        await disco.pacing.settle()
        await os_client.indices.refresh(index=exposure_index(still))
        a = await disco.trending(k=8)
        b = await disco.trending(k=8)
    finally:
        await disco.drain()
        await os_client.close()
        await mongo.close()
    assert a.ids == b.ids and len(a.ids) == 8


async def test_graph_source_brings_co_engaged_items(discovery: Any, market: Any) -> None:
    _, users = market
    a, b = users[10]["_id"], users[11]["_id"]
    x, y = (await discovery.recommend(b, k=5)).ids[:2]  # both eligible for b
    # a likes x and y (co-engagement x–y); b likes only x: y is b's graph neighbour
    res = await discovery.record_events([_like(a, x, 7), _like(a, y, 7), _like(b, x, 7)])
    assert res.accepted == 3
    recs = await discovery.recommend(b, k=50, explain=True)
    assert recs.surface == "for_you"
    graph = recs.explain["rendered"]["sources"].get("graph")
    assert graph is not None, recs.explain["skipped_sources"]
    assert y in json.dumps(graph)
    cands = {c.id: c for c in recs.candidate_set.candidates}
    assert "graph" in cands[y].sources
    # the edges read once for the source give the same graph feature as the proximity query
    from opendisco.signals import RECENT_FANOUT, ItemGraph

    recent = (await discovery.states.get(b)).recent_positive_ids[:RECENT_FANOUT]
    weights = await ItemGraph(discovery.db).weights(recent)
    direct = await ItemGraph(discovery.db).proximity(recent, list(cands))
    assert direct and {i: weights[i] for i in cands if i in weights} == direct


async def test_candidate_hits_carry_the_vectors_no_feature_mget(
    discovery: Any, market: Any
) -> None:
    from opendisco.ingest import PACKED_FIELD
    from opendisco.rerank import PROFILE_FIELDS, CandidateBatch, FeatureStore

    _, users = market
    user = users[20]["_id"]
    liked = (await discovery.recommend(user, k=5)).ids[0]
    assert (await discovery.record_events([_like(user, liked, 9)])).accepted == 1
    calls: list[str] = []
    mget_args: list[dict[str, Any]] = []
    transport = discovery.os.transport
    original = transport.perform_request

    async def counting(method: str, url: str, *a: Any, **kw: Any) -> Any:
        calls.append(url)
        if url.endswith("/_mget") and "-exposures" not in url:
            mget_args.append(kw)
        return await original(method, url, *a, **kw)

    transport.perform_request = counting
    try:
        discovery.features.vectors.clear()
        discovery.features.meta.clear()
        recs = await discovery.recommend(user, k=20, explain=True)
    finally:
        transport.perform_request = original
    assert recs.surface == "for_you" and len(recs.items) == 20
    # the candidates' vectors came packed with the candidate hits; the item mgets are the
    # member's taste profile (the profile fields of their recent positives) and at most the
    # member's own profile vector (the reciprocal estimate compares tastes with it; cached),
    # never a candidate's vector
    own = users[20]["profile_id"]
    fields = ",".join(PROFILE_FIELDS)
    profile = [kw for kw in mget_args if (kw.get("params") or {}).get("_source_includes") == fields]
    vectors = [kw for kw in mget_args if kw not in profile]
    assert len(profile) == 1, calls
    body = profile[0]["body"]
    body = json.loads(body) if isinstance(body, (str, bytes)) else body
    assert liked in body["ids"]
    assert not set(body["ids"]) & {c.id for c in recs.candidate_set.candidates}
    bodies = [
        json.loads(b) if isinstance(b, (str, bytes)) else b
        for b in (kw.get("body") for kw in vectors)
    ]
    assert bodies in ([], [{"ids": [own]}]), calls
    assert all(PACKED_FIELD not in r.item for r in recs.items)  # never leaks to clients
    # the packed float16 vectors give the features the full-precision mget gives
    cands = recs.candidate_set.candidates
    batch = CandidateBatch.from_candidates(cands)
    assert set(batch.packed) == {c.id for c in cands}
    packed = await discovery.features.lookup(batch.ids, packed=batch.packed)
    full = await FeatureStore(discovery.settings, discovery.os, discovery.db).lookup(batch.ids)
    assert np.abs(full.content).sum() > 0
    assert np.allclose(packed.content, full.content, atol=2e-3)
    assert np.allclose(packed.behaviour, full.behaviour, atol=2e-3)
    item = await discovery.item(liked)
    assert PACKED_FIELD not in item and "embedding" not in item


async def test_itemsim_source_only_when_on_and_never_past_the_hard_rules(
    discovery: Any, market: Any, market_settings: Any, model: Any
) -> None:
    from opendisco.serving import Discovery
    from opendisco.signals import ItemSimilarity

    _, users = market
    b = users[12]
    first = (await discovery.recommend(b["_id"], k=60)).ids
    x, y, w, z = first[0], first[1], first[-2], first[-1]  # all eligible for b
    assert (await discovery.record_events([_like(b["_id"], x, 5)])).accepted == 1
    assert (await discovery.record_events([_like(b["_id"], y, 5)])).accepted == 1  # later
    own = b["profile_id"]  # never shown to b, whatever proposes it
    table = ItemSimilarity(discovery.db)
    # flat sums would rank z (0.9) above w (0.8); weighted by recency y (the latest like)
    # counts 1 and x 0.5^(1 / item_sim_half_life), so w leads the source
    assert 0.9 * 0.5 ** (1 / market_settings.item_sim_half_life) < 0.8
    await table.replace({x: {z: 0.9, own: 5.0}, y: {w: 0.8}}, "t1")
    try:
        off = await discovery.recommend(b["_id"], k=50, explain=True)
        assert "itemsim" not in off.explain["rendered"]["sources"]  # the default: source off
        on_settings = market_settings.model_copy(update={"itemsim_candidates": 50})
        on = Discovery(on_settings, discovery.os, discovery.db, model=model)
        try:
            recs = await on.recommend(b["_id"], k=50, explain=True)
        finally:
            await on.drain()
        assert "itemsim" in recs.explain["rendered"]["sources"], recs.explain["skipped_sources"]
        cands = {c.id: c for c in recs.candidate_set.candidates}
        assert "itemsim" in cands[z].sources
        assert cands[w].ranks["itemsim"] < cands[z].ranks["itemsim"]
        assert own not in cands and own not in recs.ids
    finally:
        await table.clear()


def _admits(prefs: dict[str, Any], other: dict[str, Any]) -> bool:
    genders, age = prefs.get("pref_genders"), other.get("age")
    lo, hi = prefs.get("pref_age_min"), prefs.get("pref_age_max")
    return (
        (not genders or other.get("gender") in genders)
        and (lo is None or (age is not None and age >= lo))
        and (hi is None or (age is not None and age <= hi))
    )


async def test_a_template_that_drops_the_filter_and_trims_source_still_obeys_the_rules(
    market_settings: Any, market: Any, model: Any
) -> None:
    """A shipped template edited to lose ``{"$ref": "filter"}`` (shipped files are not
    guarded) and to fetch less ``_source`` — without the fields the in-process re-check reads
    — served members profiles whose preferences exclude them (58 of 132 in the first probe):
    the re-check saw no preferences and no owner. Every hit now carries the rule fields."""
    from dataclasses import replace

    from opendisco import clients
    from opendisco.queries import load, template_from_doc
    from opendisco.serving import Artifacts, Discovery

    items, users = market
    by_id = {it["_id"]: it for it in items}
    raw = json.loads(
        json.dumps(load("cold_start").raw).replace('{"$ref": "filter"}', '{"match_all": {}}')
    )
    for source in raw["sources"].values():  # the candidates' preferences and owner trimmed
        source["body"]["_source"] = {"excludes": ["embedding", "behaviour", "pref_*", "owner_id"]}
    edited = replace(
        template_from_doc("cold_start", raw, label="edited"), guarded=False, hard_filter=None
    )
    os_client = clients.async_opensearch(market_settings)
    mongo = clients.mongo_async(market_settings)
    settings = market_settings.model_copy(update={"served_log": False, "explore_rate": 0.0})
    disco = Discovery(
        settings,
        os_client,
        mongo[market_settings.mongo_db],
        model=model,
        artifacts=Artifacts(templates={"cold_start": edited}),
    )
    try:
        shown = 0
        for user in users[200:230]:
            recs = await disco.recommend(user["_id"], surface="cold_start", k=20)
            for item_id in recs.ids:
                item = by_id[item_id]
                assert item["owner_id"] != user["_id"], (user["_id"], item_id)
                assert _admits(user, item) and _admits(item, user), (user["_id"], item_id)
                shown += 1
        assert shown > 50
    finally:
        await disco.drain()
        await os_client.close()
        await mongo.close()
