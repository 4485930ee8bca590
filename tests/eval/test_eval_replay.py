"""The served-pipeline replay and evaluation on real servers (a 16-movie, 3-user world)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from opendisco import Settings, clients
from opendisco.eval import (
    Dataset,
    Ratings,
    ServedRecommender,
    Split,
    diagnose,
    evaluate,
    read_movielens,
    replay,
    time_split,
)
from opendisco.signals import UserStateStore

MOVIES = 16  # the release's first 16 movies (ml-latest-small: m1 .. m36)


@pytest.fixture(scope="module")
def mini(movielens: Path) -> tuple[Dataset, Split]:
    full = read_movielens(movielens)
    movies = list(full.items)[:MOVIES]
    rows = []
    for u, user in enumerate(("u1", "u2", "u3")):
        for j, item in enumerate(movies[u : u + 9]):
            rows.append((user, item, 4.5 if j % 4 else 3.0, 1_000_000 + 1000 * u + j))
    data = Dataset("mini", Ratings.from_rows(rows), {m: full.items[m] for m in movies})
    return data, time_split(data, n_test=2, n_val=1)


async def test_replay_then_served_eval_goes_through_the_pipeline(
    eval_settings: Settings, mini: tuple[Dataset, Split]
) -> None:
    data, split = mini
    stage = split.stage("test")
    report = await asyncio.to_thread(replay, eval_settings, data, split, stage="test", fresh=True)
    expected_events = sum(len(h) for h in stage.history)
    assert report.items == MOVIES and report.users == 3
    assert report.events == expected_events
    assert report.accepted == expected_events and report.rejected == 0
    assert report.behaviour > 0  # ALS vectors from the fitting positives

    os_client = clients.opensearch(eval_settings)
    try:
        os_client.indices.refresh(index=eval_settings.index_alias)
        assert os_client.count(index=eval_settings.index_alias)["count"] == MOVIES
        first = stage.items[stage.history[0][0]]
        src = os_client.get(index=eval_settings.index_alias, id=first)["_source"]
        assert src["popularity"] >= 1.0
        assert len(src["behaviour"]) == eval_settings.behaviour_dim
        # a movie only in test targets has no fitting popularity (no leak of the test period)
        cold = [stage.items[i] for i in np.flatnonzero(stage.cold_items)]
        cold_src = os_client.get(index=eval_settings.index_alias, id=cold[0])["_source"]
        assert cold_src["popularity"] == 0.0
    finally:
        os_client.close()

    model = ServedRecommender(eval_settings)
    result = await asyncio.to_thread(evaluate, {"served": model}, stage, k=5)
    served = result.models[0]
    assert served.users == 3 and model.degraded == 0
    assert served.latency["per_request"] and served.latency["p99_ms"] >= served.latency["p50_ms"]
    assert len(model.latencies_ms) == 3
    lists = await asyncio.to_thread(
        model.recommend_batch,
        list(stage.users),
        5,
        [[stage.items[i] for i in h] for h in stage.history],
    )
    for row, recs in enumerate(lists):
        seen = {stage.items[i] for i in stage.history[row]}
        assert recs and not seen & set(recs)  # history never comes back
        assert set(recs) <= set(data.items)
    assert 0.0 <= served.metrics["ndcg@5"] <= 1.0

    # the candidate-stage diagnosis goes through the same pipeline (explain=True)
    diag = await asyncio.to_thread(diagnose, eval_settings, stage, [0, 1, 2], k=5)
    assert diag["users"] == sum(1 for u in range(3) if len(stage.targets[u]))
    assert 0.0 <= diag["recall@5"] <= diag["candidate_recall"] <= 1.0
    assert diag["source_recall"] and max(diag["source_recall"].values()) <= diag["candidate_recall"]

    # running it again without clearing is idempotent: every like is a duplicate
    again = await asyncio.to_thread(replay, eval_settings, data, split, stage="test")
    assert again.duplicates == expected_events and again.accepted == 0


async def test_replay_learns_tastes_whatever_the_events_engine_bound(
    eval_settings: Settings, mini: tuple[Dataset, Split]
) -> None:
    """The replay is offline: the interactive bound on the events' item lookup
    (``events_engine_timeout_s``, past which likes are applied without their vectors) must not
    decide what it learns — a loaded machine would otherwise change the evaluation."""
    data, split = mini
    hurried = eval_settings.model_copy(
        update={
            "events_engine_timeout_s": 1e-4,
            "index_alias": f"{eval_settings.index_alias}-b",
            "mongo_db": f"{eval_settings.mongo_db}b",
        }
    )
    report = await asyncio.to_thread(replay, hurried, data, split, stage="test", fresh=True)
    assert report.accepted > 0
    mongo = clients.mongo_async(hurried)
    try:
        states = await UserStateStore(mongo[hurried.mongo_db]).get_many(["u1", "u2", "u3"])
        assert all(len(s.vector or []) == hurried.embedding_dim for s in states.values())
    finally:
        await mongo.close()
        clients.mongo(hurried).drop_database(hurried.mongo_db)
        clients.opensearch(hurried).indices.delete(
            index=f"{hurried.index_alias}*", ignore_unavailable=True
        )
