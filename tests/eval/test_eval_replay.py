"""The served-pipeline replay on real servers: items loaded, indexed, likes applied."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from opendisco import Settings
from opendisco.eval import Dataset, Ratings, read_movielens, replay, time_split


async def test_replay_loads_items_reindexes_and_posts_likes(
    settings: Settings, movielens: Path, os_client: Any, mongo_db: Any
) -> None:
    # a namespace of its own: other suites share the session alias and database
    settings = settings.model_copy(
        update={"index_alias": f"{settings.index_alias}-ev", "mongo_db": f"{settings.mongo_db}ev"}
    )
    full = read_movielens(movielens)
    movies = [f"m{i}" for i in (1, 2, 3, 5, 6, 7, 10, 11, 16, 17, 19, 21, 25, 32, 34, 36)]
    rows = []
    for u, user in enumerate(("u1", "u2", "u3")):
        for j, item in enumerate(movies[u : u + 9]):
            rows.append((user, item, 4.5 if j % 4 else 3.0, 1_000_000 + 1000 * u + j))
    data = Dataset("mini", Ratings.from_rows(rows), {m: full.items[m] for m in movies})
    split = time_split(data, n_test=2, n_val=1)
    report = await _replay(settings, data, split)
    stage = split.stage("test")
    expected_events = sum(len(h) for h in stage.history)
    assert report.items == len(movies)
    assert report.events == expected_events
    assert report.accepted == expected_events and report.rejected == 0
    os_client.indices.refresh(index=settings.index_alias)
    assert os_client.count(index=settings.index_alias)["count"] == len(movies)
    stored = os_client.get(index=settings.index_alias, id=stage.items[stage.history[0][0]])
    assert stored["_source"]["popularity"] >= 1.0
    # running it again is idempotent: every like is a duplicate
    again = await _replay(settings, data, split)
    assert again.duplicates == expected_events and again.accepted == 0
    mongo_db.client.drop_database(settings.mongo_db)


async def _replay(settings: Settings, data: Dataset, split: Any) -> Any:
    import asyncio

    return await asyncio.to_thread(replay, settings, data, split, stage="test")
