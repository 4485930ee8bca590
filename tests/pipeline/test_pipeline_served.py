"""The served pipeline end to end on the real servers (what API, CLI and eval call)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from opendisco import InvalidInput


def _like(user: str, item: str, n: int) -> dict[str, Any]:
    return {
        "id": f"pl-{user}-{item}-{n}",
        "type": "like",
        "user_id": user,
        "item_id": item,
        "ts": datetime.now(UTC),
    }


async def test_cold_start_user_gets_results(discovery: Any, market: Any) -> None:
    recs = await discovery.recommend("u-nobody", k=10)
    assert recs.surface == "cold_start"
    assert len(recs.items) == 10
    assert len(set(recs.ids)) == 10
    assert not recs.degraded
    assert recs.template_version.startswith("cold_start@")


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


async def test_trending_is_non_personal(discovery: Any, market: Any) -> None:
    a = await discovery.trending("for_you", k=8)
    b = await discovery.trending("for_you", k=8)
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
    from opendisco.ingest.graph import RECENT_FANOUT, ItemGraph

    recent = (await discovery.states.get(b)).recent_positive_ids[:RECENT_FANOUT]
    weights = await ItemGraph(discovery.db).weights(recent)
    direct = await ItemGraph(discovery.db).proximity(recent, list(cands))
    assert direct and {i: weights[i] for i in cands if i in weights} == direct
